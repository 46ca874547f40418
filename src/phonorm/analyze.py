"""The analysis stage with its torch kernels: `analyze()` runs `phonorm.analysis` and hands it
`TorchKernels` (LEACE's eraser, blocks moved to a GPU, the logistic probe on a GPU), so that the
analysis package itself never imports torch (analysis/kernels.py says why; pyproject.toml's import
contracts check it). `phonorm analyze`, `phonorm run` and Python users call `analyze` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from phonorm.analysis import run
from phonorm.analysis.kernels import Eraser
from phonorm.analysis.probes import PROBE_TOL, FoldFit
from phonorm.artifacts import code_hash
from phonorm.errors import PhonormError
from phonorm.settings.analyze import ANALYZE_DEFAULTS, AnalyzeSettings


def analyze(features: str | Path, *, out: str | Path, settings: AnalyzeSettings) -> str:
    """Every analysis of the feature store `features`, written under `out` (`analysis/run.py`), with
    the torch kernels on `settings.device`; returns the summary line."""
    return run.analyze(features, out=out, settings=settings, kernels=TorchKernels.of(settings.device))


@dataclass(frozen=True)
class TorchKernels:
    """`analysis.kernels.Kernels` in torch. `device`: "cpu" or a CUDA device ("cuda")."""

    device: str = "cpu"

    @property
    def code(self) -> str:
        return code_hash(__name__)

    @classmethod
    def of(cls, setting: str) -> "TorchKernels":
        """The kernels for `AnalyzeSettings.device`: "cpu"; "cuda" (PhonormError when torch sees no CUDA
        device); "auto": "cuda" when torch sees one, else "cpu"."""
        if setting == "cpu":
            return cls("cpu")
        import torch

        if torch.cuda.is_available():
            return cls("cuda")
        if setting == "cuda":
            raise PhonormError("--device cuda: torch sees no CUDA device (use --device auto or cpu)")
        return cls("cpu")

    def to_device(self, block: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.array(block)).to(self.device)

    def leace(self, x: np.ndarray, concept: np.ndarray, rows: Optional[np.ndarray] = None) -> Eraser:
        return leace_eraser(x, concept, rows)

    def logistic_on_device(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                           max_iter: int) -> FoldFit:
        model = TorchLogisticProbe(max_iter=max_iter, device=self.device).fit(x_train, y_train)
        return FoldFit(model.predict(x_test), model.n_iter_, model.converged_, model.gradient_)


def leace_eraser(x: np.ndarray, concept: np.ndarray, rows: np.ndarray | None = None, chunk: int = 4096):
    """A fitted LEACE eraser for features `x[rows]` (rows, dim; all of `x` when `rows` is None) and
    class labels `concept` (rows,). Returns a function `erase(x, rows=None, dtype=float64)` that
    edits `x[rows]` and returns it as `dtype` (rows, dim).

    The statistics are accumulated `chunk` rows at a time in float64 (`LeaceFitter.update`, Welford's
    running sums) and the edit is applied a chunk at a time: no float64 copy of the rows exists at
    once (a fold of 16,000 × 768 rows took three 98 MB copies to fit and two to apply)."""
    import torch
    from concept_erasure import LeaceFitter

    at = np.arange(len(x)) if rows is None else np.asarray(rows)
    classes, codes = np.unique(concept, return_inverse=True)
    onehot = np.eye(len(classes))[codes]
    if len(classes) == 2:  # one column carries a binary concept; the package expects k-1 or k columns alike
        onehot = onehot[:, :1]
    fitter = LeaceFitter(x.shape[1], onehot.shape[1], dtype=torch.float64)
    for begin in range(0, len(at), chunk):
        fitter.update(torch.from_numpy(np.asarray(x[at[begin:begin + chunk]], dtype=np.float64)),
                      torch.from_numpy(onehot[begin:begin + chunk]))
    eraser = fitter.eraser

    def erase(features: np.ndarray, rows: np.ndarray | None = None, dtype: type = np.float64) -> np.ndarray:
        picked = np.arange(len(features)) if rows is None else np.asarray(rows)
        edited: np.ndarray = np.empty((len(picked), features.shape[1]), dtype=dtype)
        with torch.no_grad():
            for begin in range(0, len(picked), chunk):
                block = np.asarray(features[picked[begin:begin + chunk]], dtype=np.float64)
                edited[begin:begin + len(block)] = eraser(torch.from_numpy(block)).numpy()
        return edited
    return erase


class TorchLogisticProbe:
    """`make_classifier`'s probe fitted with torch (float64) on `device` (e.g. "cuda"): standardise
    with the training rows' mean and population standard deviation, then minimise scikit-learn's
    LogisticRegression(C=1) objective, (Σᵢ logloss + ½‖W‖²)/n (intercept not penalised; binomial for
    two classes, multinomial above), by L-BFGS (history 10, strong Wolfe line search, as
    scikit-learn's lbfgs) until the largest gradient entry is below `tol` (scikit-learn's stopping
    rule) or `max_iter` iterations. Hand-written because scikit-learn has no GPU solver; tests check
    that it reaches scikit-learn's optimum.

    After `fit(x (rows, dim), y (rows,))`: `classes_`, `n_iter_`, `converged_`;
    `decision_function(x)` ((rows,) for two classes, else (rows, classes)) and `predict(x)`."""

    def __init__(self, max_iter: int = ANALYZE_DEFAULTS["probe_max_iter"], tol: float = PROBE_TOL, device: str = "cuda"):
        self.max_iter, self.tol, self.device = max_iter, tol, device

    def fit(self, x: np.ndarray, y: np.ndarray) -> "TorchLogisticProbe":
        import torch

        self.classes_, codes = np.unique(y, return_inverse=True)
        data = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=self.device)
        self._mean, std = data.mean(0), data.std(0, unbiased=False)
        self._std = torch.where(std > 0, std, torch.ones_like(std))
        data = (data - self._mean) / self._std
        target = torch.as_tensor(codes, device=self.device)
        n, dim = data.shape
        binary = len(self.classes_) == 2
        weights = torch.zeros(dim, 1 if binary else len(self.classes_), dtype=torch.float64, device=self.device,
                              requires_grad=True)
        bias = torch.zeros(weights.shape[1], dtype=torch.float64, device=self.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([weights, bias], lr=1, max_iter=self.max_iter, history_size=10,
                                      tolerance_grad=self.tol, tolerance_change=0.0, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            logits = data @ weights + bias
            if binary:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits[:, 0], target.to(torch.float64), reduction="sum")
            else:
                loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            value = (loss + 0.5 * (weights * weights).sum()) / n
            value.backward()
            return value

        optimizer.step(closure)
        self.n_iter_ = int(optimizer.state[weights].get("n_iter", 0))
        grad_max = max(float(p.grad.abs().max()) for p in (weights, bias) if p.grad is not None)
        self.gradient_ = grad_max
        self.converged_ = bool(grad_max <= self.tol and self.n_iter_ < self.max_iter)
        self._weights, self._bias = weights.detach(), bias.detach()
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        import torch

        data = (torch.as_tensor(np.asarray(x), dtype=torch.float64, device=self.device) - self._mean) / self._std
        logits = data @ self._weights + self._bias
        return (logits[:, 0] if logits.shape[1] == 1 else logits).cpu().numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        values = self.decision_function(x)
        return self.classes_[(values > 0).astype(int) if values.ndim == 1 else values.argmax(1)]
