"""phonorm extract: same rows for every model, all layers, exact batching, resume, parts, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError
from phonorm.features import shards as extract_module
from phonorm.features.extract import ExtractSettings, extract, finish_store, plan_extraction, run_share, start_store
from phonorm.features.selection import select_rows
from phonorm.features.store import FeatureStore
from phonorm.frames import FrameGeometry
from phonorm.models.backbone import all_layers, load_backbone, normalize_waveform


@pytest.fixture(scope="module")
def tiny_models(tiny_model):
    """Two tiny random models: group norm (base-style) and stable layer norm (large-style)."""
    return {"gn": tiny_model(0), "ln": tiny_model(0, stable_layer_norm=True)}


@pytest.fixture(scope="module")
def two_model_store(fake_corpus, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "F"
    extract(fake_corpus, models=tiny_models, out=out, settings=ExtractSettings())
    return out


def _direct_layers(source: str, wave: np.ndarray) -> list[np.ndarray]:
    model = load_backbone(source)
    with torch.inference_mode():
        hidden = all_layers(model, normalize_waveform(torch.from_numpy(wave))[None])
    return [h[0].numpy() for h in hidden]


def test_two_models_share_rows_and_every_layer(two_model_store, fake_corpus, tiny_models):
    store = FeatureStore(two_model_store)
    frames = store.frames
    assert store.models == ["gn", "ln"]
    assert len(frames) == store.rows > 0 and list(frames["row"]) == list(range(store.rows))
    assert set(frames["split"]) == {"test"} and (frames["phone"] != "").all()  # labelled frames only
    for name in store.models:
        assert store.layers(name) == [f"L{k}" for k in range(5)]  # n_layers + 1
        for layer in store.layers(name):
            array = store.layer(name, layer)
            assert array.shape == (store.rows, 64) and array.dtype == np.float16
    assert store.record.models[0].layer_convention.startswith("L0 = input")
    # The stored rows are the model's own frames of the utterance, at the recorded frame index.
    first = frames["utterance_id"].iloc[0]
    rows = frames[frames["utterance_id"] == first]
    wave = sf.read(PreparedCorpus(fake_corpus).utterances("test").set_index("utterance_id").loc[first, "audio_path"],
                   dtype="float32")[0]
    for name in store.models:
        direct = _direct_layers(tiny_models[name], wave)
        for k in (0, 4):
            np.testing.assert_allclose(store.layer(name, f"L{k}")[rows["row"]].astype(np.float32),
                                       direct[k][rows["frame"]], rtol=2e-3, atol=2e-3)
    # Classic baselines on the same rows; F0 of the female speaker higher than of the male one.
    assert store.classic_names() == ["f0_hz", "f0_semitone_z", "mfcc"]
    f0 = store.classic("f0_hz")[:, 0]
    assert store.classic("mfcc").shape == (store.rows, 13)
    assert np.isfinite(f0).sum() > store.rows // 3
    by_sex = pd.Series(f0).groupby(frames["sex"].to_numpy()).mean()
    assert by_sex["F"] > by_sex["M"] * 1.3
    z = store.classic("f0_semitone_z")[:, 0]
    for _, index in frames.groupby("speaker").indices.items():
        assert abs(np.nanmean(z[index])) < 1e-3 and abs(np.nanstd(z[index]) - 1) < 1e-3


def test_iter_blocks_streams_rows_in_order(two_model_store):
    store = FeatureStore(two_model_store)
    whole = store.layer("ln", "L2").astype(np.float32)
    blocks = list(store.iter_blocks("ln", "L2", block=100))
    assert all(b.dtype == np.float32 for b in blocks) and max(len(b) for b in blocks) == 100
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    pick = np.array([5, 3, store.rows - 1])
    np.testing.assert_array_equal(np.concatenate(list(store.iter_blocks("ln", "L2", rows=pick, block=2))), whole[pick])
    stored = store.layer("ln", "L2")  # dtype=None: the rows as stored (the analysis casts them itself)
    for rows in (None, pick):
        raw = list(store.iter_blocks("ln", "L2", rows=rows, block=100, dtype=None))
        assert all(b.dtype == stored.dtype for b in raw)
        np.testing.assert_array_equal(np.concatenate(raw), stored if rows is None else stored[pick])


def test_rerun_is_a_no_op_and_other_rows_are_refused(two_model_store, fake_corpus, tiny_models):
    assert "nothing to do" in extract(fake_corpus, models=tiny_models, out=two_model_store, settings=ExtractSettings())
    with pytest.raises(InputError, match="other rows"):
        extract(fake_corpus, models=tiny_models, out=two_model_store, settings=ExtractSettings(frames="middle"))


def _equal_length_corpus(fake_corpus, folder, seconds=1.2):
    """A copy of the fake corpus whose test utterances all have the same length."""
    shutil.copytree(fake_corpus, folder, ignore=shutil.ignore_patterns("wav"))
    (folder / "wav").mkdir()
    utterances = pd.read_parquet(folder / "utterances.parquet")
    samples = int(seconds * 16000)
    for i, row in utterances.iterrows():
        wave, rate = sf.read(row["audio_path"], dtype="float32")
        wave = np.pad(wave, (0, max(0, samples - len(wave))))[:samples]
        path = folder / "wav" / f"{row['utterance_id']}.wav"
        sf.write(path, wave, rate)
        utterances.loc[i, ["audio_path", "duration"]] = [str(path), samples / rate]
    utterances.to_parquet(folder / "utterances.parquet", index=False)
    return folder


def _one_model(store_path, name, layer):
    return FeatureStore(store_path).layer(name, layer).astype(np.float32)


def test_group_norm_batches_equal_single_utterances(fake_corpus, tiny_models, tmp_path):
    corpus = _equal_length_corpus(fake_corpus, tmp_path / "equal")
    models = {"gn": tiny_models["gn"]}
    fast = ExtractSettings(dtype="float32", batch_seconds=100.0, classic=False)
    single = ExtractSettings(dtype="float32", batch_seconds=0.5, classic=False)
    extract(corpus, models=models, out=tmp_path / "batched", settings=fast)
    extract(corpus, models=models, out=tmp_path / "single", settings=single)
    passes = {k: FeatureStore(tmp_path / k).record.models[0].forward_passes for k in ("batched", "single")}
    assert passes["batched"] == 1 and passes["single"] == 12  # one batch of 12 equal-length utterances
    for layer in ("L0", "L2", "L4"):
        np.testing.assert_allclose(_one_model(tmp_path / "batched", "gn", layer),
                                   _one_model(tmp_path / "single", "gn", layer), atol=1e-4, rtol=1e-4)


def test_layer_norm_padded_batches_with_mask_equal_single_utterances(fake_corpus, tiny_models, tmp_path):
    models = {"ln": tiny_models["ln"]}
    extract(fake_corpus, models=models, out=tmp_path / "batched",
            settings=ExtractSettings(dtype="float32", batch_seconds=100.0, classic=False))
    extract(fake_corpus, models=models, out=tmp_path / "single",
            settings=ExtractSettings(dtype="float32", batch_seconds=0.5, classic=False))
    passes = {k: FeatureStore(tmp_path / k).record.models[0].forward_passes for k in ("batched", "single")}
    assert passes["batched"] < passes["single"] == 12
    for layer in ("L0", "L4"):
        np.testing.assert_allclose(_one_model(tmp_path / "batched", "ln", layer),
                                   _one_model(tmp_path / "single", "ln", layer), atol=1e-4, rtol=1e-4)


def test_resume_after_interruption(fake_corpus, tiny_models, two_model_store, tmp_path, monkeypatch):
    out = tmp_path / "F"
    settings = ExtractSettings(chunk_seconds=4.0, classic=False)
    models = {"gn": tiny_models["gn"]}
    real_load, calls = extract_module._load, []

    def crash_after_seven(utt):
        calls.append(utt.utterance_id)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_load(utt)

    monkeypatch.setattr(extract_module, "_load", crash_after_seven)
    with pytest.raises(KeyboardInterrupt):
        extract(fake_corpus, models=models, out=out, settings=settings)
    # Nothing looks complete: no manifest, no final layer file, only hidden partial files.
    assert not (out / "manifest.json").exists()
    assert not list((out / "gn").glob("L*.npy")) and list((out / "gn").glob(".L*.npy.partial"))
    with pytest.raises(InputError, match="incomplete"):
        FeatureStore(out)
    monkeypatch.setattr(extract_module, "_load", real_load)
    counted = []
    monkeypatch.setattr(extract_module, "_load", lambda utt: counted.append(1) or real_load(utt))
    extract(fake_corpus, models=models, out=out, settings=settings)
    assert 0 < len(counted) < 12  # finished chunks were not redone
    for layer in ("L0", "L3"):
        np.testing.assert_array_equal(_one_model(out, "gn", layer), _one_model(two_model_store, "gn", layer))


def test_processes_write_row_ordered_parts(fake_corpus, tiny_models, two_model_store, tmp_path):
    """What `accelerate launch` does with two processes, run one after the other."""
    out = tmp_path / "F"
    plan = plan_extraction(fake_corpus, models={"gn": tiny_models["gn"]}, out=out, settings=ExtractSettings())
    start_store(plan)
    for process in (0, 1):
        run_share(plan, process, 2, progress=False)
    finish_store(plan, 2)
    store = FeatureStore(out)
    parts = sorted((out / "gn" / "L2").glob("part-*.npy"))
    assert [p.name for p in parts] == ["part-00000.npy", "part-00001.npy"]
    assert 0 < len(np.load(parts[0])) < store.rows
    reference = FeatureStore(two_model_store)
    np.testing.assert_array_equal(store.layer("gn", "L2"), reference.layer("gn", "L2"))
    np.testing.assert_array_equal(np.concatenate(list(store.iter_blocks("gn", "L2", block=50))),
                                  reference.layer("gn", "L2").astype(np.float32))
    np.testing.assert_allclose(store.classic("f0_semitone_z"), reference.classic("f0_semitone_z"), equal_nan=True)


def test_selection_modes_and_caps(fake_corpus):
    corpus, grid = PreparedCorpus(fake_corpus), FrameGeometry()
    labelled = select_rows(corpus, "test", grid, "labelled").frames
    middle = select_rows(corpus, "test", grid, "middle").frames
    every = select_rows(corpus, "test", grid, "all").frames
    assert len(middle) < len(labelled) < len(every) and (every["phone"] == "").any()
    third = (middle["end"] - middle["start"]) / 3
    assert ((middle["time"] >= middle["start"] + third - 1e-9) & (middle["time"] < middle["end"] - third)).all()
    segments = select_rows(corpus, "test", grid, "labelled", pool="segment").frames
    assert segments["segment_id"].is_unique and segments["n_frames"].sum() == len(labelled)
    capped = select_rows(corpus, "test", grid, "labelled", max_per_speaker_label=3, seed=1).frames
    assert capped.groupby(["speaker", "phone"]).size().max() == 3
    # The cap, drawn directly: groups in (speaker, phone) order, 3 of each larger group's rows by
    # rng.choice, row order kept.
    rng, keep = np.random.default_rng(1), []
    for _, rows in labelled.groupby(["speaker", "phone"], observed=True).groups.items():
        rows = np.asarray(rows)
        keep.extend(rng.choice(rows, size=3, replace=False) if len(rows) > 3 else rows)
    expected = labelled.loc[np.sort(keep)].reset_index(drop=True)
    pd.testing.assert_frame_equal(capped.drop(columns="row").astype(str), expected.drop(columns="row").astype(str))
    assert list(capped["row"]) == list(range(len(capped)))
    chunked = select_rows(corpus, "test", grid, "labelled", max_per_speaker_label=3, seed=1, chunk_rows=20)
    assert chunked.key == select_rows(corpus, "test", grid, "labelled", max_per_speaker_label=3, seed=1).key
    again = select_rows(corpus, "test", grid, "labelled", max_per_speaker_label=3, seed=1).frames
    other = select_rows(corpus, "test", grid, "labelled", max_per_speaker_label=3, seed=2).frames
    pd.testing.assert_frame_equal(capped, again)
    assert not capped["time"].equals(other["time"])


def test_segment_pool_is_the_mean_of_the_segment_frames(fake_corpus, tiny_models, tmp_path):
    models = {"gn": tiny_models["gn"]}
    f32 = dict(dtype="float32", classic=False, layers="L1")
    extract(fake_corpus, models=models, out=tmp_path / "frames", settings=ExtractSettings(**f32))
    extract(fake_corpus, models=models, out=tmp_path / "segments", settings=ExtractSettings(pool="segment", **f32))
    frames, segments = FeatureStore(tmp_path / "frames"), FeatureStore(tmp_path / "segments")
    assert segments.layers("gn") == ["L1"]
    means = pd.DataFrame(frames.layer("gn", "L1")).groupby(frames.frames["segment_id"].to_numpy()).mean()
    expected = means.loc[segments.frames["segment_id"]].to_numpy()
    np.testing.assert_allclose(segments.layer("gn", "L1"), expected, rtol=1e-5, atol=1e-5)


def test_bad_settings_and_models_give_clear_errors(fake_corpus, tiny_models, tmp_path):
    with pytest.raises(PhonormError, match="L0..L4"):
        extract(fake_corpus, models={"gn": tiny_models["gn"]}, out=tmp_path / "a", settings=ExtractSettings(layers="0,9"))
    with pytest.raises(PhonormError, match="no-such-model"):
        extract(fake_corpus, models={"x": str(tmp_path / "no-such-model")}, out=tmp_path / "b", settings=ExtractSettings())
    from phonorm.cli_settings import settings_from_options

    with pytest.raises(PhonormError, match="--frames: got 'some'"):
        settings_from_options(ExtractSettings, {"frames": "some"})
    with pytest.raises(PhonormError, match="--layers"):
        settings_from_options(ExtractSettings, {"layers": "first"})
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        extract(fake_corpus, models={"gn": tiny_models["gn"]}, out=tmp_path / "d", settings=ExtractSettings())
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"


def test_shares_cover_every_utterance_once_even_when_empty():
    from phonorm.features.shards import share_of

    table = pd.DataFrame({"utterance_id": [f"u{i}" for i in range(5)], "duration": [1.0, 3.0, 0.5, 2.0, 2.0]})
    for n in (1, 2, 3, 7):
        shares = [share_of(table, p, n) for p in range(n)]
        assert list(pd.concat(shares)["utterance_id"]) == list(table["utterance_id"])
    assert sum(len(share_of(table, p, 7)) == 0 for p in range(7)) >= 2


def test_an_empty_share_writes_an_empty_part(tmp_path):
    from phonorm.features.writer import RowWriter

    path = RowWriter(tmp_path / "part-00003.npy", rows=0, dim=8, dtype="float16").finish()
    assert np.load(path).shape == (0, 8)


# ----------------------------------------------------------------- memory per stored row
def test_rows_are_decided_and_written_a_chunk_at_a_time_and_read_back_by_range(fake_corpus, tmp_path, monkeypatch):
    """Extraction's resident memory must not grow by hundreds of bytes per stored row: the rows are
    generated a chunk of utterances at a time (for their key, then again to write frames.parquet),
    never held all at once, the segments are not kept as one small table per utterance, and the
    shares read the rows' times back from the file by range."""
    from phonorm.features.frames_file import RowIndex, frames_hash, write_frames

    # One small table per utterance (PreparedCorpus.segments_of) cost tens of KB each: not used.
    monkeypatch.setattr(PreparedCorpus, "segments_of", lambda self, utt: pytest.fail("segments_of called"))
    corpus, grid = PreparedCorpus(fake_corpus), FrameGeometry()
    selection = select_rows(corpus, "test", grid, "all", chunk_rows=50)
    whole = select_rows(corpus, "test", grid, "all").frames  # one chunk
    chunks = list(selection.iter_frames())
    longest = int((selection.utterances["row_end"] - selection.utterances["row_begin"]).max())
    assert len(chunks) > 3 and all(len(c) < 50 + longest for c in chunks)
    assert sum(len(c) for c in chunks) == selection.rows == len(whole) == selection.counts["rows"]
    # Utterances never straddle chunks; row numbers run on; categories are the chunk's own codes.
    assert [c["row"].iloc[0] for c in chunks] == list(np.cumsum([0] + [len(c) for c in chunks[:-1]]))
    first = chunks[1]["utterance_id"].iloc[0]
    assert first not in set(chunks[0]["utterance_id"].astype(str)) and str(chunks[1]["phone"].dtype) == "category"
    assert selection.key == frames_hash(whole) == select_rows(corpus, "test", grid, "all").key
    # The file holds plain strings, written in blocks, and hashes to the key (stores written before
    # keep resuming).
    write_frames(tmp_path / "frames.parquet", selection.iter_frames(), block=37)
    written = pd.read_parquet(tmp_path / "frames.parquet")
    assert len(written) == selection.rows and str(written["phone"].dtype) == "str"
    pd.testing.assert_frame_equal(written, whole.astype({c: "str" for c in ("utterance_id", "speaker", "sex",
                                                                                 "split", "phone", "syllable")}))
    assert frames_hash(written) == selection.key
    index = RowIndex(tmp_path / "frames.parquet")
    assert len(index) == selection.rows
    for begin, end in [(0, 0), (0, 5), (30, 80), (36, 38), (selection.rows - 3, selection.rows)]:
        pd.testing.assert_frame_equal(index.rows(begin, end), written[["time", "start", "end"]].iloc[begin:end]
                                      .reset_index(drop=True))
    with pytest.raises(ValueError, match="outside"):
        index.rows(0, selection.rows + 1)
    selection.close()  # extraction lets go of the segments once the rows are written
    with pytest.raises(RuntimeError, match="frames.parquet"):
        next(selection.iter_frames())


def test_onednn_shape_caches_are_bounded_unless_the_user_chose(tmp_path):
    """Every utterance length is a new input shape; oneDNN's per-shape caches (1024 by default)
    would grow with the number of distinct lengths, so importing the upstream bounds them."""
    import os
    import subprocess
    import sys

    code = ("import os, phonorm.models.upstream; "
            "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    bounded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert bounded.stdout.split() == ["16", "16"]
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "LRU_CACHE_CAPACITY": "8"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.split() == ["16", "8"]


def test_audio_replaced_after_prepare_is_refused_by_name(fake_corpus, tiny_models, tmp_path):
    """A file of another length than `prepare` recorded (re-recorded, re-trimmed) no longer fits its
    alignment: extract names it and both durations instead of putting the old labels on new audio; a
    deleted file is named as missing."""
    folder = _equal_length_corpus(fake_corpus, tmp_path / "corpus")
    utterances = pd.read_parquet(folder / "utterances.parquet")
    victim = utterances[utterances.split == "test"].iloc[0]
    wave, rate = sf.read(victim["audio_path"], dtype="float32")
    sf.write(victim["audio_path"], np.concatenate([wave, wave, wave]), rate)
    with pytest.raises(InputError, match=rf"{victim['utterance_id']}\.wav: 3\.600 s of audio where `phonorm prepare` "
                                         r"recorded 1\.200 s: the file was replaced"):
        extract(folder, models={"gn": tiny_models["gn"]}, out=tmp_path / "F", settings=ExtractSettings())
    Path(victim["audio_path"]).unlink()
    with pytest.raises(InputError, match=r"audio file missing \(it was there when the corpus was prepared\)"):
        extract(folder, models={"gn": tiny_models["gn"]}, out=tmp_path / "F2", settings=ExtractSettings())


def test_releasing_free_memory_can_be_throttled(monkeypatch):
    """Extraction returns free heap pages at most every few seconds, not after every small batch."""
    from phonorm import memory

    trims: list[int] = []

    class Libc:
        def malloc_trim(self, pad: int) -> None:
            trims.append(pad)

    monkeypatch.setattr(memory, "_libc", lambda: Libc())
    monkeypatch.setattr(memory, "_last_release", 0.0)
    memory.release_free_memory()
    memory.release_free_memory(every=60.0)  # within a minute of the last: skipped
    assert len(trims) == 1
    memory.release_free_memory()  # unthrottled calls always trim
    assert len(trims) == 2
