"""The numerical work the analysis hands to a tensor library it never imports (torch).

Three things need torch: LEACE's eraser (the authors' package `concept-erasure` is written in torch),
moving a block of rows to a GPU for the streamed products, and the logistic probe on a GPU. They are
declared here as `Kernels` and implemented once, in `phonorm.analyze.TorchKernels`, which the callers
of the analysis (`phonorm analyze`, `phonorm run`, `phonorm.analyze.analyze`) hand in. So the analysis
package reads stores and writes tables with NumPy, SciPy and scikit-learn only, and an import
contract (pyproject.toml, `make lint`) keeps it that way.

On the device, the analysis's sums use tensor methods only (`.double()`, `.new_tensor()`, `@`,
`.sum()`), never a function of the library's module.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import numpy as np


class Eraser(Protocol):
    """A fitted concept eraser: `erase(features (rows, dim), rows=None, dtype=float64)` edits
    `features[rows]` (all rows when None) and returns them as `dtype` (rows, dim)."""

    def __call__(self, features: np.ndarray, rows: Optional[np.ndarray] = None,
                 dtype: type = np.float64) -> np.ndarray: ...


class DeviceFit(Protocol):
    """One fold's logistic probe fitted on a device: its test predictions, the solver's iterations,
    whether it converged, and the largest gradient entry at its solution."""

    @property
    def predicted(self) -> np.ndarray: ...

    @property
    def iterations(self) -> int: ...

    @property
    def converged(self) -> bool: ...

    @property
    def gradient(self) -> float: ...


class Kernels(Protocol):
    """What the analysis needs from a tensor library. `device`: where the streamed products and the
    logistic probes run ("cpu": NumPy and scikit-learn; e.g. "cuda": the library's tensors)."""

    @property
    def device(self) -> str: ...

    @property
    def code(self) -> str:
        """A version of the code behind the kernels (part of a saved layer result's key:
        `layers.saved_inputs`)."""
        ...

    def to_device(self, block: np.ndarray) -> Any:
        """`block` (rows, dim), as stored, as a tensor on `device`."""
        ...

    def leace(self, x: np.ndarray, concept: np.ndarray, rows: Optional[np.ndarray] = None) -> Eraser:
        """The LEACE eraser of class labels `concept` (rows,) fitted on `x[rows]` (rows, dim)."""
        ...

    def logistic_on_device(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                           max_iter: int) -> DeviceFit:
        """`probes.make_classifier`'s logistic probe, fitted on `device` (the same objective)."""
        ...
