"""The frame targets of HuBERT's masked prediction: k-means cluster ids, one per model frame.

Iteration 1 (Hsu et al. 2021, "HuBERT", section III.A) clusters MFCCs: 13 coefficients of Praat
(c0..c12, through parselmouth) with their deltas and delta-deltas (39 values), z-scored over the
train split, at the centre of every model frame (20 ms hop; the nearest Praat frame, 5 ms apart).
Iteration 2 clusters a layer of a model pre-trained by iteration 1 (`--targets-from MODEL
--targets-layer N`), at the model's own frames. scikit-learn's `MiniBatchKMeans` does the
clustering (fairseq's HuBERT recipe uses the same estimator).

A second stream of targets keeps pitch (`--pitch-clusters K`): k-means of Praat's pitch track
(`pitch_frames`: F0 in semitones, the same relative to the utterance's mean, its slope, voicing),
predicted by a head of its own beside the MFCC head. HuBERT allows several target sets at once
(Hsu et al. 2021, section III.C, "cluster ensembles": one projection per k-means model, the losses
summed). MFCCs drop pitch by construction (the cepstrum smooths away the harmonics), so a model
trained on MFCC clusters alone is pitch-deaf: it reads lexical tone no better than one frame of F0
(docs/pretraining-study.md).

`ClusterTargets` holds the fitted normalisation and centroids and the ids of every utterance the
run uses (train and held-out); each stream is written once to `OUT/targets.npz` (the MFCC or layer
stream) or `OUT/targets-pitch.npz` (arrays only, read with `allow_pickle=False`), so a resumed run
trains on the very same targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from phonorm.artifacts import atomic_path
from phonorm.errors import InputError
from phonorm.frames import SAMPLE_RATE, FrameGeometry, sample_nearest
from phonorm.pitch import DEFAULT_PITCH_RANGE_HZ
from phonorm.pitch import semitones as to_semitones

N_MFCC = 13  # c0..c12, as the classic baseline (features/classic.py)
DELTA_WIDTH = 2  # frames each side in the delta regression (HTK's default, as in HuBERT's MFCC targets)
PRAAT_STEP_S = 0.005
MAX_FIT_FRAMES = 250_000
"""k-means is fitted on at most this many train frames (a seeded random subset); every frame is then
assigned. fairseq's HuBERT recipe also fits on a fraction of the frames (`percent`)."""
PITCH_DELTA_WIDTH = 5
"""Praat frames (5 ms) each side in the F0 slope's regression: +-25 ms, about a model frame each side."""
PITCH_DIMS = 4
TARGETS_FILE = "targets.npz"
STREAM_FILES = {"units": TARGETS_FILE, "pitch": "targets-pitch.npz"}
"""The file of each target stream: `units` (MFCC clusters, or a model layer's in iteration 2), `pitch`."""


def regression_deltas(values: np.ndarray, width: int = DELTA_WIDTH) -> np.ndarray:
    """Delta coefficients over time, (frames, k) -> (frames, k): the regression formula of HTK
    (sum_n n (c[t+n] - c[t-n]) / (2 sum_n n^2), n = 1..width), edges repeated."""
    padded = np.pad(values, ((width, width), (0, 0)), mode="edge")
    frames = len(values)
    num = sum(n * (padded[width + n: width + n + frames] - padded[width - n: width - n + frames])
              for n in range(1, width + 1))
    return num / (2.0 * sum(n * n for n in range(1, width + 1)))


def mfcc_frames(wave: np.ndarray, geometry: FrameGeometry, n_frames: int) -> np.ndarray:
    """MFCC c0..c12 with deltas and delta-deltas at the centre of each model frame.

    `wave`: (samples,) at 16 kHz. Returns float32 (n_frames, 39). Deltas are taken on Praat's own
    5 ms grid and then sampled, so they do not depend on the model's hop.
    """
    import parselmouth  # Praat objects never leave this function (pitfall 12, docs/pitfalls.md)

    sound = parselmouth.Sound(np.asarray(wave, dtype=np.float64), sampling_frequency=SAMPLE_RATE)
    mfcc = sound.to_mfcc(number_of_coefficients=N_MFCC - 1, time_step=PRAAT_STEP_S)
    coefficients = mfcc.to_array().T  # (praat frames, 13)
    delta = regression_deltas(coefficients)
    stacked = np.concatenate([coefficients, delta, regression_deltas(delta)], axis=1)
    return sample_nearest(mfcc.xs(), stacked, geometry.frame_times(n_frames), np.inf).astype(np.float32)


def pitch_frames(wave: np.ndarray, geometry: FrameGeometry, n_frames: int) -> np.ndarray:
    """Pitch at the centre of each model frame: float32 (n_frames, 4) with columns

    0. F0 in semitones re 100 Hz (carries the voice's register, so the speaker's sex);
    1. the same minus the utterance's mean over voiced frames (the pitch contour: lexical tone);
    2. its slope, semitones per second (HTK regression over +-25 ms);
    3. voicing, 1 where Praat found F0, else 0.

    F0 is interpolated linearly in semitones through unvoiced stretches (and held at the edges), so
    every frame has a value, as in prosody models that predict continuous F0 with a voicing flag. An
    utterance without a voiced frame has zeros. `wave`: (samples,) at 16 kHz.
    """
    import parselmouth  # Praat objects never leave this function (pitfall 12, docs/pitfalls.md)

    sound = parselmouth.Sound(np.asarray(wave, dtype=np.float64), sampling_frequency=SAMPLE_RATE)
    try:
        pitch = sound.to_pitch(time_step=PRAAT_STEP_S, pitch_floor=DEFAULT_PITCH_RANGE_HZ[0],
                                pitch_ceiling=DEFAULT_PITCH_RANGE_HZ[1])  # one range: pre-training knows no sex
        xs, f0 = pitch.xs(), pitch.selected_array["frequency"]
    except parselmouth.PraatError:  # shorter than the pitch floor's analysis window
        xs, f0 = np.zeros(0), np.zeros(0)
    voiced = f0 > 0
    track = np.zeros((len(xs), PITCH_DIMS))
    if voiced.any():
        semitones = to_semitones(f0[voiced])
        filled = np.interp(xs, xs[voiced], semitones)
        track[:, 0] = filled
        track[:, 1] = filled - semitones.mean()
        track[:, 2] = regression_deltas(filled[:, None], PITCH_DELTA_WIDTH)[:, 0] / PRAAT_STEP_S
        track[:, 3] = voiced
    out = sample_nearest(xs, track, geometry.frame_times(n_frames), np.inf)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


@dataclass
class ClusterTargets:
    """Fitted k-means targets. `source`: "mfcc" or "MODEL:Lk"; `mean`, `scale` (dim,): the
    z-scoring of the features; `centroids` (clusters, dim); `utterance_ids` with `offsets`
    (utterances + 1,) into `ids` (frames,) int16: the cluster id of every frame of every utterance."""

    source: str
    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray
    utterance_ids: list[str]
    offsets: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        self._position = {u: i for i, u in enumerate(self.utterance_ids)}

    @property
    def clusters(self) -> int:
        return int(len(self.centroids))

    def of(self, utterance_id: str) -> np.ndarray:
        """(frames,) int64 cluster ids of one utterance."""
        i = self._position[utterance_id]
        return self.ids[self.offsets[i]: self.offsets[i + 1]].astype(np.int64)

    def usage(self) -> dict[str, float]:
        """How evenly the clusters are used: the share of frames in the largest cluster, the number of
        clusters used, and the perplexity of the frame distribution over clusters."""
        counts = np.bincount(self.ids.astype(np.int64), minlength=self.clusters)
        p = counts[counts > 0] / counts.sum()
        return {"largest_share": round(float(p.max()), 4), "used": int((counts > 0).sum()),
                "perplexity": round(float(np.exp(-(p * np.log(p)).sum())), 2)}

    def save(self, folder: str | Path, stream: str = "units") -> Path:
        path = Path(folder) / STREAM_FILES[stream]
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, source=np.array(self.source), mean=self.mean, scale=self.scale,
                     centroids=self.centroids, utterance_ids=np.array(self.utterance_ids, dtype=str),
                     offsets=self.offsets, ids=self.ids)
        return path

    @classmethod
    def load(cls, folder: str | Path, stream: str = "units") -> Optional["ClusterTargets"]:
        """The targets of `stream` saved in `folder`, or None when there are none."""
        path = Path(folder) / STREAM_FILES[stream]
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(source=str(data["source"]), mean=data["mean"], scale=data["scale"],
                           centroids=data["centroids"], utterance_ids=[str(u) for u in data["utterance_ids"]],
                           offsets=data["offsets"], ids=data["ids"])
        except (OSError, ValueError, KeyError) as err:
            raise InputError(path, f"unreadable cluster targets ({err}); delete it to compute them again") from None


FeatureFn = Callable[[np.ndarray, int], np.ndarray]
"""(wave (samples,) at 16 kHz, n_frames) -> (n_frames, dim) features of one utterance."""


def layer_features(model_source: str, layer: int) -> FeatureFn:
    """A function (wave, n_frames) -> (n_frames, dim) float32 giving layer `layer` of a model
    (iteration 2), the model loaded once on the CPU in eval mode."""
    import torch

    from phonorm.models.upstream import Upstream

    upstream = Upstream(model_source, name=model_source)
    if not 0 <= layer <= upstream.n_layers:
        raise InputError(model_source, f"has layers L0..L{upstream.n_layers}; --targets-layer {layer} is not one")

    def features(wave: np.ndarray, n_frames: int) -> np.ndarray:
        states, frames = upstream([wave], [layer])
        out = states[0, 0, : frames[0]].to(torch.float32).numpy()
        if len(out) != n_frames:
            raise InputError(model_source, f"gives {len(out)} frames where the pre-training model has {n_frames}: "
                                           "its frame geometry differs")
        return out

    return features


def fit_targets(waves: Callable[[Any], np.ndarray], tables: dict[str, pd.DataFrame], geometry: FrameGeometry, *,
                clusters: int, seed: int, source: str = "mfcc", features: Optional[FeatureFn] = None) -> ClusterTargets:
    """Fit k-means on the frames of `tables["train"]` and assign every frame of every table.

    `waves(row) -> (samples,)` float32 (`row`: a named tuple of the utterance table) at 16 kHz, normalised as the model sees it.
    `features(wave, n_frames) -> (n_frames, dim)`: MFCCs (`mfcc_frames`) unless given (`pitch_frames`
    for the pitch stream, `layer_features` for iteration 2).
    """
    from sklearn.cluster import MiniBatchKMeans

    from phonorm.progress import progress

    compute = features or (lambda wave, n: mfcc_frames(wave, geometry, n))
    order = pd.concat([t.assign(_part=name) for name, t in tables.items()]).drop_duplicates("utterance_id")
    per_utterance: list[np.ndarray] = []
    for row in progress(iterable=order.itertuples(index=False), total=len(order), desc=f"targets ({source})",
                        unit="utt"):
        wave = waves(row)
        n_frames = geometry.num_frames(len(wave))
        per_utterance.append(compute(wave, n_frames).astype(np.float32))
    lengths = np.array([len(f) for f in per_utterance])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    stacked = np.concatenate(per_utterance)
    is_train = np.repeat((order["_part"] == "train").to_numpy(), lengths)
    train = stacked[is_train]
    if len(train) < clusters:
        raise InputError("train split", f"{len(train)} frames for {clusters} clusters: too little audio")
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale[scale == 0] = 1.0
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(len(train), size=min(MAX_FIT_FRAMES, len(train)), replace=False))
    kmeans = MiniBatchKMeans(n_clusters=clusters, random_state=seed, batch_size=4096, n_init=3, max_iter=100,
                             max_no_improvement=20)
    kmeans.fit((train[fit_rows] - mean) / scale)
    ids = kmeans.predict((stacked - mean) / scale).astype(np.int16)
    return ClusterTargets(source=source, mean=mean.astype(np.float32), scale=scale.astype(np.float32),
                          centroids=kmeans.cluster_centers_.astype(np.float32),
                          utterance_ids=order["utterance_id"].astype(str).tolist(), offsets=offsets, ids=ids)

