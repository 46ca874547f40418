"""Small synthetic feature stores with planted structure, in the layout of docs/architecture.md
("Feature store"): frames.parquet, <model>/L<k>.npy, classic/*.npy, manifest.json.

Every row carries latent factors: sex (±1 per speaker), tone (1-4, or 0 = none), phone (6 classes),
a speaker offset, and noise. Layer k of every model is a fixed random rotation R_k of

    a_sex·sex·e_sex + a_tone·T(tone) + a_phone·P(phone) + a_spk·offset(speaker) + noise_k

where noise_k is shared by all models at layer k unless the layer is "changed" for a model, in which
case that model gets fresh noise there (so its similarity to the reference drops) and its own
amplitudes. Designs:

- "normalizes" (C1-C4 true): the fine-tuned models equal the pre-trained one below layer `n_layers-2`;
  in the top two layers the task factors are amplified and the irrelevant one removed (tone/phone
  models drop sex, the sex model drops tone), while tone_sex keeps both, amplified.
- "keeps" (C1-C4 false): the fine-tuned models change their LOWER layers and leave the top equal to
  the reference (no suppression, similarity drops low down), and tone_sex loses tone (also at the top).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from phonorm.features.manifest import StoreManifest, StoreModel

PRE = dict(sex=1.2, tone=0.8, phone=0.8, spk=0.6)
TASK_GAIN = 3.5


def _amplitudes(model: str, design: str, changed: bool) -> dict[str, float]:
    amp = dict(PRE)
    if not changed or model == "pretrained":
        return amp
    tasks = set(model.split("_"))
    if design == "normalizes":
        for task in tasks:
            amp[task] = TASK_GAIN
        if "sex" not in tasks:
            amp["sex"], amp["spk"] = 0.0, 0.0
        if "tone" not in tasks and "sex" in tasks:
            amp["tone"] = 0.0
    elif model == "tone_sex":  # "keeps": nothing suppressed; the multitask model loses tone
        amp["tone"] = 0.0
    return amp


def make_feature_store(folder: str | Path, *, design: str = "normalizes",
                       models: tuple[str, ...] = ("pretrained", "tone", "phone", "sex", "tone_sex"),
                       n_speakers: int = 12, n_utterances: int = 4, n_frames: int = 40, dim: int = 16,
                       n_layers: int = 5, seed: int = 0, tasks_in_manifest: bool = False,
                       dtype: str = "float16", parts: int = 1, speaker_scale: float = 1.0) -> Path:
    """Write a store to `folder` and return its path. Rows = speakers × utterances × frames.
    `speaker_scale` scales every speaker's offset (0: speakers differ only by sex, whose direction
    is then the one shared linear direction that an eraser fitted on other speakers can remove)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    speakers = [f"S{i:02d}" for i in range(n_speakers)]
    sex_of = {s: ("F" if i % 2 == 0 else "M") for i, s in enumerate(speakers)}
    rows = []
    for s in speakers:
        for u in range(n_utterances):
            for f in range(n_frames):
                tone = int(rng.integers(1, 5)) if rng.random() > 0.2 else 0
                phone = ["a", "i", "u", "zh", "sh", "n"][int(rng.integers(0, 6))]
                rows.append(dict(utterance_id=f"{s}_u{u}", speaker=s, sex=sex_of[s], split="test",
                                 time=0.02 * f + 0.0125, frame=f, n_frames=1, segment_id=len(rows) // 5,
                                 start=np.nan, end=np.nan, phone=phone, tone=tone,
                                 syllable=f"{phone}{tone}" if tone else ""))
    frames = pd.DataFrame(rows)
    frames.insert(0, "row", np.arange(len(frames)))
    n = len(frames)
    frames.to_parquet(folder / "frames.parquet", index=False)

    sex = np.where(frames.sex == "F", 1.0, -1.0)
    tone_vec = rng.normal(size=(5, dim)) / np.sqrt(dim) * 2
    tone_vec[0] = 0
    phone_codes = pd.Categorical(frames.phone).codes
    phone_vec = rng.normal(size=(6, dim)) / np.sqrt(dim) * 2
    spk_codes = pd.Categorical(frames.speaker).codes
    spk_vec = rng.normal(size=(n_speakers, dim)) / np.sqrt(dim) * 2
    sex_dir = np.zeros(dim)
    sex_dir[0] = 1.0
    tone_x = tone_vec[frames.tone.to_numpy()]
    phone_x = phone_vec[phone_codes]
    spk_x = spk_vec[spk_codes] * speaker_scale
    rotations = [np.linalg.qr(rng.normal(size=(dim, dim)))[0] for _ in range(n_layers)]
    shared_noise = [rng.normal(size=(n, dim)) for _ in range(n_layers)]

    entries = []
    for model in models:
        (folder / model).mkdir(exist_ok=True)
        for k in range(n_layers):
            if design == "normalizes":
                changed = k >= n_layers - 2
            else:  # lower layers change; tone_sex also changes its top layers (losing tone)
                changed = 1 <= k <= 2 or (model == "tone_sex" and k >= n_layers - 2)
            changed = changed and model != "pretrained"
            amp = _amplitudes(model, design, changed)
            noise = rng.normal(size=(n, dim)) if changed else shared_noise[k]
            latent = (amp["sex"] * sex[:, None] * sex_dir + amp["tone"] * tone_x + amp["phone"] * phone_x
                      + amp["spk"] * spk_x + noise)
            x = (latent @ rotations[k] + 3.0).astype(dtype)
            if parts == 1:
                np.save(folder / model / f"L{k}.npy", x)
            else:
                (folder / model / f"L{k}").mkdir(exist_ok=True)
                for i, chunk in enumerate(np.array_split(x, parts)):
                    np.save(folder / model / f"L{k}" / f"part-{i:05d}.npy", chunk)
        entry = StoreModel(name=model, source=f"/nonexistent/{model}", model_type="wav2vec2", n_layers=n_layers - 1,
                           dim=dim, layers=[f"L{k}" for k in range(n_layers)], dtype=dtype, parts=parts,
                           layer_convention="L0 = input to the first Transformer layer", group_norm=True,
                           normalize_waveform=True, geometry={}, kind="given")
        if tasks_in_manifest:
            entry.kind = "pretrained" if model == "pretrained" else "finetuned"
            entry.tasks = [] if model == "pretrained" else model.split("_")
        entries.append(entry)

    (folder / "classic").mkdir(exist_ok=True)
    semitone_hz = np.where(sex > 0, 220.0, 120.0) * 2 ** ((frames.tone.to_numpy() - 2.5) * 1.5 / 12)
    f0 = semitone_hz * np.exp(rng.normal(scale=0.03, size=n))
    f0[rng.random(n) < 0.1] = np.nan
    st = 12 * np.log2(f0 / 100)
    z = np.full(n, np.nan)
    for s in speakers:
        m = (frames.speaker == s).to_numpy() & np.isfinite(st)
        z[m] = (st[m] - st[m].mean()) / st[m].std()
    mfcc = (phone_x @ rng.normal(size=(dim, 13)) + rng.normal(size=(n, 13))).astype(np.float32)
    np.save(folder / "classic" / "f0_hz.npy", f0[:, None].astype(np.float32))
    np.save(folder / "classic" / "f0_semitone_z.npy", z[:, None].astype(np.float32))
    np.save(folder / "classic" / "mfcc.npy", mfcc)
    StoreManifest(format="phonorm-feature-store/1", rows=n, row_unit="frame", models=entries,
                  layer_convention="L0 = input to the first Transformer layer",
                  classic=["f0_hz", "f0_semitone_z", "mfcc"], geometry={}, corpus="/nonexistent/corpus",
                  classic_counts={"rows_without_value": {"f0_hz": int(np.isnan(f0).sum()),
                                                         "f0_semitone_z": int(np.isnan(z).sum()), "mfcc": 0}},
                  rows_key=f"fake-{design}-{seed}-{n}", counts={}, settings={"design": design},
                  provenance={}).save(folder)
    return folder
