"""The streamed pass over a layer (all rows, block by block) and the sums it accumulates: view sums
(PCA), factor group sums (variance shares), and, against the reference's layer of the same name,
pair sums per group with the permutation floor; plus the layer × layer matrix's pair sums on the
sampled rows. The reference's per-group sums and sampled rows are kept for the current layer
(`LayerSums` reads the store layer by layer: every model of a layer reuses them).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from phonorm.analysis.grouped import GroupedCrossSums, GroupedViewSums, SpeakerSums, group_runs
from phonorm.analysis.inputs import FACTORS, Execution, LayerSettings, Rows, run_jobs
from phonorm.analysis.measures import PairSums
from phonorm.analysis.normalization import GroupSums
from phonorm.analysis.similarity import PRODUCT_DTYPES, CrossSums, ViewSums, as_block, head_shift, row_norms
from phonorm.artifacts import atomic_path
from phonorm.errors import InputError
from phonorm.features.store import FeatureStore


@dataclass
class Pairs:
    """Pair sums of a layer with the reference's layer of the same name: the whole rows, the fit and
    score halves, the permutation floor of each, and the per-speaker sums (None when not kept)."""

    whole: Optional[PairSums] = None
    fit: Optional[PairSums] = None
    score: Optional[PairSums] = None
    floor: Optional[PairSums] = None
    floor_fit: Optional[PairSums] = None
    floor_score: Optional[PairSums] = None
    speakers: Optional[SpeakerSums] = None


@dataclass
class Streamed:
    """What one streamed pass over a layer gives: its view sums, its factor group sums, its pairs."""

    view: ViewSums
    groups: dict[str, GroupSums] = field(default_factory=dict)
    pairs: Pairs = field(default_factory=Pairs)


class LayerSums:
    """Streams the layers of `store`; keeps the current reference layer's sums and every reference
    layer's sampled rows (in the scratch folder `scratch`, removed by `close`)."""

    def __init__(self, store: FeatureStore, rows: Rows, settings: LayerSettings, execution: Execution,
                 pool: ThreadPoolExecutor, scratch: Path):
        self.store, self.rows, self.settings, self.execution = store, rows, settings, execution
        self.pool, self.scratch = pool, scratch
        self.dtype = PRODUCT_DTYPES[settings.products]  # each block's products; the sums stay float64
        self._ref_groups: Optional[tuple[str, GroupedViewSums]] = None
        self._ref_samples: dict[str, tuple] = {}

    def read_sample(self, model: str, layer: str, dtype: Any = np.float32) -> np.ndarray:
        """The sampled rows of a layer (sample, dim), float32 or `dtype` (None: as stored)."""
        return np.concatenate(list(self.store.iter_blocks(model, layer, rows=self.rows.sample,
                                                          block=self.execution.block, dtype=dtype)))

    def close(self) -> None:
        """Remove this run's temporary files (`scratch`)."""
        self._ref_samples.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _shift(self, model: str, layer: str) -> np.ndarray:
        """The fixed shift of a layer's sums: the mean of its first rows (float64 (dim,))."""
        return next(self.store.iter_blocks(model, layer, block=min(self.execution.block, 4096),
                                           dtype=np.float64)).mean(axis=0)

    def _put(self, block: np.ndarray):
        """A block (as stored, e.g. float16) where its products are taken: as is (CPU), or a tensor on
        the device (`as_block` converts it there)."""
        if self.execution.device == "cpu":
            return block
        return self.execution.kernels.to_device(block)

    def _check_finite(self, block: np.ndarray, begin: int, model: str, layer: str) -> None:
        """InputError naming the layer's file and its first row holding NaN or inf (`block` holds rows
        begin..): one such row makes every sum NaN, and the decompositions would then fail deep in LAPACK."""
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise InputError(self.store.layer_files(model, layer)[0],
                             f"row {begin + int(np.argmin(finite))} of model {model!r} layer {layer} holds NaN or inf "
                             f"({int((~finite).sum())} such rows among rows {begin}..{begin + len(block) - 1}); the "
                             f"store is damaged: extract this model again (phonorm validate {self.store.folder} "
                             "lists every damaged layer)")

    def _reference_groups(self, layer: str) -> GroupedViewSums:
        """The reference layer's per-group sums over all rows (kept for the current layer only: the
        work runs layer by layer, so every model of a layer reuses them)."""
        if self._ref_groups is not None and self._ref_groups[0] == layer:
            return self._ref_groups[1]
        ref = self.settings.reference
        grouped = GroupedViewSums(self.rows.n_groups, self.store.dim(ref), self._shift(ref, layer))
        begin = 0
        for block in self.store.iter_blocks(ref, layer, block=self.execution.block, dtype=None):
            end = begin + len(block)
            y = as_block(self._put(block), grouped.shift, self.dtype)
            grouped.update_shifted(y, row_norms(y), group_runs(self.rows.group_codes[begin:end], like=y))
            begin = end
        grouped.share_views()  # every model of this layer reuses its views' decompositions (jackknife)
        self._ref_groups = (layer, grouped)
        return grouped

    def _reference_view(self, mask: np.ndarray | None) -> ViewSums:
        """The current reference layer's `ViewSums` of a part of the rows (whole, fit or score half),
        the same object for every model of the layer (the reference's groups share their views), so
        its PCA (an eigendecomposition) is memoised on it."""
        assert self._ref_groups is not None
        return self._ref_groups[1].view(mask)

    def _layer_groups(self, model: str, dim: int, shift: np.ndarray) -> GroupedViewSums:
        """Empty per-group sums of a layer; the reference's share their views: the models compared
        with this layer next reuse their decompositions (the jackknife's leave-one-out views)."""
        groups = GroupedViewSums(self.rows.n_groups, dim, shift)
        if model == self.settings.reference:
            groups.share_views()
        return groups

    def stream(self, model: str, layer: str, same: str | None) -> Streamed:
        """One pass over all rows of `layer`: its view sums and factor group sums, and, when the
        reference has a layer of the same name (`same`), the pair sums kept per group (speaker, or
        fit/score half), the reference read in within-speaker permuted order (the floor) and the
        pair sums of the whole, the fit and score halves and the floor."""
        store, s, block = self.store, self.settings, self.execution.block
        dim = store.dim(model)
        shift = self._shift(model, layer)
        groups = {f: GroupSums(int(self.rows.codes[f].max()) + 1, dim, shift) for f in FACTORS if self.rows.codes[f].max() >= 0}
        x_groups = self._layer_groups(model, dim, shift)
        sums = permuted = None
        if same is not None:
            # The reference against its own layer: its per-group sums are the x sums, taken in this
            # pass (a pass of their own for them would read and multiply the layer once more).
            y_groups = x_groups if model == s.reference and same == layer else self._reference_groups(same)
            sums = SpeakerSums(x_groups, y_groups, GroupedCrossSums(self.rows.n_groups, dim, y_groups.dim))
            if self.rows.permutation is not None:
                permuted = GroupedCrossSums(self.rows.n_groups, dim, y_groups.dim)
        # Blocks as stored (float16 views of the memory map): as_block casts and shifts in one pass.
        streams = [store.iter_blocks(model, layer, block=block, dtype=None)]
        if same is not None:
            streams.append(store.iter_blocks(s.reference, same, block=block, dtype=None))
        begin = 0
        for blocks in zip(*streams):
            end = begin + len(blocks[0])
            self._check_finite(blocks[0], begin, model, layer)
            x = as_block(self._put(blocks[0]), shift, self.dtype)
            a = row_norms(x)
            runs = group_runs(self.rows.group_codes[begin:end], like=x)
            # The block's products and factor sums are independent: one worker thread each.
            jobs: dict[str, Any] = {"view": lambda x=x, a=a, runs=runs: x_groups.update_shifted(x, a, runs)}
            host = x if isinstance(x, np.ndarray) else as_block(blocks[0], shift, self.dtype)
            jobs["factors"] = lambda host=host, begin=begin, end=end: [
                g.update_shifted(host, self.rows.codes[f][begin:end]) for f, g in groups.items()]
            if sums is not None:
                y = as_block(self._put(blocks[1]), sums.y.shift, self.dtype)
                jobs["cross"] = lambda x=x, y=y, a=a, runs=runs: sums.cross.update_shifted(x, y, a, row_norms(y), runs)
            if permuted is not None and sums is not None and self.rows.permutation is not None and same is not None:
                rows = self.rows.permutation[begin:end]
                y_perm = next(store.iter_blocks(s.reference, same, rows=rows, block=max(1, len(rows)), dtype=None))
                yp = as_block(self._put(y_perm), sums.y.shift, self.dtype)
                jobs["floor"] = lambda x=x, yp=yp, a=a, runs=runs: permuted.update_shifted(x, yp, a, row_norms(yp), runs)
            run_jobs(self.pool, jobs)
            begin = end
        x_view = x_groups.view()
        if model == s.reference:  # the models compared with this layer next reuse its per-group sums
            self._ref_groups = (layer, x_groups)
        pairs = Pairs()
        if sums is not None:
            # One ViewSums object per view and part, shared by the pair and its floor (the PCA of each
            # is computed once).
            parts = {"whole": None} if self.rows.half_masks is None else \
                {"whole": None, "fit": self.rows.half_masks[0], "score": self.rows.half_masks[1]}
            for part, mask in parts.items():
                x_part = x_view if mask is None else x_groups.view(mask)
                y_part = self._reference_view(mask)
                setattr(pairs, part, PairSums(x_part, y_part, sums.cross.cross(mask)))
                if permuted is not None:
                    setattr(pairs, "floor" if mask is None else f"floor_{part}", PairSums(x_part, y_part,
                                                                                          permuted.cross(mask)))
            if self.rows.groups_are_speakers:
                pairs.speakers = sums
        return Streamed(view=x_view, groups=groups, pairs=pairs)

    def matrix_pairs(self, x: np.ndarray, model: str, layer: str) -> dict[str, tuple]:
        """Pair sums of the sampled rows `x` (sample, dim) of this layer with every reference layer's
        sampled rows: (fit, score) per reference layer (fit None unless --held-out). The layer × layer
        matrix is computed on the sample rows (the same rows for every cell), so that its cost does
        not grow with the store: 13 × 13 cells of 768-dim products over 300,000 rows would take
        longer than all the rest of the analysis. The products are taken `SAMPLE_BLOCK` rows at a
        time: no float64 copy of a whole sample exists (two cells at once held 370 MB of them)."""
        ref = self.settings.reference
        parts = self.rows.sample_parts(self.settings.held_out)
        shift = head_shift(x)
        x_views = [_view_of(x, rows, shift, self.dtype) for rows in parts]

        def cell(partner: str) -> tuple:
            y_shift, y, y_views = self._reference_sample(partner)
            pairs = []
            for x_view, y_view, rows in zip(x_views, y_views, parts):
                cross = CrossSums(x.shape[1], y.shape[1])
                for block in _row_blocks(rows):
                    cross.update_shifted(as_block(x[block], shift, self.dtype), as_block(y[block], y_shift, self.dtype))
                pairs.append(PairSums(x_view, y_view, cross))
            return (pairs[0], pairs[1]) if len(pairs) == 2 else (None, pairs[0])

        for partner in self.store.layers(ref):  # read (and cache) in order, then the products in parallel
            self._reference_sample(partner)
        return run_jobs(self.pool, {partner: lambda p=partner: cell(p) for partner in self.store.layers(ref)})

    def _reference_sample(self, layer: str) -> tuple[np.ndarray, np.ndarray, list[ViewSums]]:
        """The reference layer's sampled rows (in the store's dtype), their shift and view sums per
        sample part; cached for every reference layer. The rows are cached in a scratch file
        (`scratch`), memory-mapped: the page cache holds them, not the process (13 layers × 20,000 rows
        × 768 float16 are 400 MB), and reading them back costs no more than keeping them."""
        if layer not in self._ref_samples:
            y = self.read_sample(self.settings.reference, layer, dtype=None)
            shift = head_shift(y)
            views = [_view_of(y, rows, shift, self.dtype) for rows in self.rows.sample_parts(self.settings.held_out)]
            path = self.scratch / f"reference_sample__{layer}.npy"
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, y)
            self._ref_samples[layer] = (shift, np.load(path, mmap_mode="r"), views)
        return self._ref_samples[layer]


SAMPLE_BLOCK = 4096  # rows of the in-memory sample cast to float64 at once (layer matrix)


def _row_blocks(rows: np.ndarray) -> Iterator[np.ndarray | slice]:
    """`rows` (positions) in consecutive pieces of at most `SAMPLE_BLOCK`: slices when the rows are
    one contiguous run (every row of the sample: views, no copy), else position arrays."""
    contiguous = len(rows) > 0 and int(rows[-1]) - int(rows[0]) + 1 == len(rows) and bool(np.all(np.diff(rows) == 1))
    for begin in range(0, len(rows), SAMPLE_BLOCK):
        if contiguous:
            start = int(rows[0]) + begin
            yield slice(start, min(start + SAMPLE_BLOCK, int(rows[0]) + len(rows)))
        else:
            yield rows[begin:begin + SAMPLE_BLOCK]


def _view_of(x: np.ndarray, rows: np.ndarray, shift: np.ndarray, dtype=np.float64) -> ViewSums:
    """`ViewSums` of the rows `rows` of `x` about `shift`, `SAMPLE_BLOCK` rows at a time, the products
    taken in `dtype`."""
    view = ViewSums(x.shape[1], shift)
    for block in _row_blocks(rows):
        view.update(x[block], dtype)
    return view
