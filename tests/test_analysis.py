"""`phonorm analyze` end to end on a small designed store: every output, resumption, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phonorm.analysis.measures import MEASURES
from phonorm.analyze import analyze
from phonorm.errors import InputError
from phonorm.features.store import FeatureStore
from phonorm.settings import AnalyzeSettings


@pytest.fixture(scope="module")
def results(analysed_store):
    """(store, results, settings, summary line): conftest's analysed store."""
    return analysed_store


def test_every_output_is_written(results):
    store, out, _, summary = results
    assert "C1" in summary
    for name in ("similarity.csv", "probes.csv", "normalization.csv", "claims.json", "settings.json",
                 "projections/pca_variance.parquet", "projections/tone__L2.parquet", "projections/pretrained__L0.parquet",
                 "layer_matrix/tone__vs__pretrained__svcca.csv", "layer_matrix/tone__vs__pretrained__cka_debiased.csv",
                 "figures/similarity_per_layer.png", "figures/similarity_per_layer.svg", "figures/probes_per_layer.png",
                 "figures/layer_matrix_tone__svcca.svg", "figures/umap_tone.png", "figures/pca_variance.svg",
                 "figures/normalization_per_layer.png", "erasure.csv", "figures/erasure_per_layer.png"):
        assert (out / name).is_file(), name
    assert not list(out.rglob(".*.tmp"))
    assert (out / ".parts").is_dir() and not (out / ".parts" / "scratch").exists()  # scratch files removed


def test_tables_hold_the_planted_structure(results):
    store, out, _, _ = results
    sim = pd.read_csv(out / "similarity.csv")
    assert list(sim.columns[:5]) == ["model", "reference", "layer", "measure", "value"]
    assert set(sim.measure) == set(MEASURES) == {"svcca", "svcca_fixed", "pwcca", "cka", "cka_debiased"}
    svcca = sim[sim.measure == "svcca"].set_index("layer").value
    assert svcca["L0"] == pytest.approx(1.0, abs=1e-6) and svcca["L2"] < 0.6  # top layers changed
    assert sim.held_out_value.notna().all() and sim.floor.notna().all()
    assert (sim.n_fit + sim.n_score == sim.n).all() and (sim.n_fit > 0).all()
    same = sim[sim.layer == "L0"].set_index("measure")
    assert (same.value > same.floor + 0.2).all()  # identical layers stand far above the floor
    cka = sim[sim.measure == "cka"]
    assert (cka.ci_low <= cka.value + 1e-9).all() and (cka.value <= cka.ci_high + 1e-9).all()
    # by default only linear CKA (C2 decides on it) has its jackknife interval; SVCCA and PWCCA decide nothing
    assert sim[sim.measure != "cka"].ci_low.isna().all() and sim[sim.measure == "cka"].ci_low.notna().all()
    matrix = pd.read_csv(out / "layer_matrix" / "tone__vs__pretrained__svcca.csv", index_col=0)
    assert matrix.shape == (3, 3) and matrix.loc["L0", "L0"] == pytest.approx(1.0, abs=1e-6)

    probes = pd.read_csv(out / "probes.csv")
    for column in ("model", "layer", "label", "accuracy", "chance", "ci_low", "ci_high", "n", "folds", "iterations",
                   "converged"):
        assert column in probes.columns
    assert set(probes.label) == {"tone", "phone", "sex", "speaker"}
    sex = probes[probes.label == "sex"].set_index(["model", "layer"]).accuracy
    assert sex["pretrained", "L2"] > sex["tone", "L2"] + 0.2
    classic = probes[probes.model == "classic"]
    assert set(classic.layer) == {"f0_hz", "f0_semitone_z", "mfcc"}
    f0 = classic[classic.layer == "f0_hz"]
    assert (f0.dropped > 0).all()  # unvoiced rows dropped and counted
    f0_sex = f0[f0.label == "sex"].accuracy.iloc[0]
    z_sex = classic[(classic.layer == "f0_semitone_z") & (classic.label == "sex")].accuracy.iloc[0]
    assert f0_sex > 0.95 and z_sex < 0.75  # per-speaker z-scoring removes sex from F0

    norm = pd.read_csv(out / "normalization.csv")
    share = norm[(norm.measure == "variance_share") & (norm.label == "sex")].set_index(["model", "layer"]).value
    assert share["pretrained", "L2"] > 5 * share["tone", "L2"]
    assert {"silhouette", "variance_share_std"} <= set(norm.measure)

    layers = FeatureStore(store).layers("tone")
    middle = layers[len(layers) // 2]
    projection = pd.read_parquet(out / "projections" / f"tone__{middle}.parquet")
    assert {"row", "pc1", "pc2", "umap1", "umap2", "umap_fit", "sex", "tone"} <= set(projection.columns)
    assert projection.umap1.notna().all() and 0 < projection.umap_fit.sum() <= 150
    # UMAP for the first, middle and last layer by default (here all three); PCA coordinates for every layer
    assert all(pd.read_parquet(out / "projections" / f"tone__{layer}.parquet").umap1.notna().all() for layer in layers)
    pca = pd.read_parquet(out / "projections" / "pca_variance.parquet")
    last = pca.groupby(["model", "layer"]).cumulative.max()
    np.testing.assert_allclose(last, 1.0, atol=1e-9)

    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["held_out"] is True and "code_version" in settings["provenance"]
    assert set(settings["held_out_split"]["fit_speakers"]).isdisjoint(settings["held_out_split"]["score_speakers"])


def test_erasure_table(results):
    _, out, _, _ = results
    erasure = pd.read_csv(out / "erasure.csv")
    assert set(erasure.model) == {"tone"}  # the models fine-tuned on tone (the reference is not erased)
    assert set(zip(erasure.erased, erasure.probed)) == {(e, p) for e in ("none", "sex", "tone") for p in ("tone", "sex")}
    # 6 speakers with offsets in random directions: whether sex reaches chance is tests/test_erasure.py's
    # planted question; here, that every row says how it was decided
    inside = (erasure.above_chance_ci_low > -erasure.equivalence_margin) & \
        (erasure.above_chance_ci_high < erasure.equivalence_margin)
    assert (erasure.at_chance.astype(bool) == inside).all() and (erasure.above_chance_ci_level == 0.90).all()
    assert erasure.ci_method.str.startswith("cluster-robust t").all() and erasure.roles.str.contains("disjoint").all()
    assert erasure.chance_method.str.startswith("class prior").all() and (erasure.speakers == 6).all()


def test_independent_views_score_at_the_permutation_floor(tmp_path):
    from fake_store import make_feature_store

    store = make_feature_store(tmp_path / "f", models=("pretrained", "tone"), n_speakers=8, n_utterances=3,
                               n_frames=40, n_layers=2, dtype="float32")
    rng = np.random.default_rng(5)
    for layer in ("L0", "L1"):  # the "model" becomes noise unrelated to the reference
        shape = np.load(store / "tone" / f"{layer}.npy").shape
        np.save(store / "tone" / f"{layer}.npy", rng.normal(size=shape).astype(np.float32))
    analyze(store, out=tmp_path / "r", settings=AnalyzeSettings(reference="pretrained", umap=False, folds=2,
                                                                 labels=["sex"],
                                                                 erasure=False, figures=False, progress=False))
    sim = pd.read_csv(tmp_path / "r" / "similarity.csv")
    assert len(sim) == 10
    for row in sim.itertuples():
        # in-sample values of unrelated data are far from 0 (SVCCA/PWCCA overfit) but sit at their floor
        assert abs(row.value - row.floor) < 0.05 + 0.15 * abs(row.floor), row
        assert abs(row.held_out_value) < 0.2, row
    svcca = sim[sim.measure == "svcca"]
    assert (svcca.value > 0.08).all() and (svcca.held_out_value < svcca.value / 2).all()  # the bias the floor exposes


def test_evaluations_are_the_primary_evidence(results, tmp_path):
    from typer.testing import CliRunner

    from phonorm.cli import app

    store, _, _, _ = results
    frames = pd.read_parquet(store / "frames.parquet")
    by = {s: {"correct": 90, "n_frames": 100} for s in sorted(set(frames.speaker))}
    (tmp_path / "tone.json").write_text(json.dumps({"model": "tone", "split": "test", "tasks": {
        "tone": {"accuracy": 0.9, "by_speaker": by}}}))
    base = ["analyze", str(store), "--reference", "pretrained", "--no-umap", "--folds", "2",
            "--no-erasure", "--no-layer-matrix"]
    outcome = CliRunner().invoke(app, base + ["--out", str(tmp_path / "r"), "--evaluation", f"tone={tmp_path / 'tone.json'}"])
    assert outcome.exit_code == 0, outcome.output
    claims = json.loads((tmp_path / "r" / "claims.json").read_text())
    assert claims["evaluations"]["tone"]["per_speaker"] is True and claims["evaluations_missing"] == []
    assert not (tmp_path / "r" / "erasure.csv").read_text().strip().splitlines()[1:]
    outcome = CliRunner().invoke(app, base + ["--out", str(tmp_path / "r2"), "--evaluation", "tone=/no/such.json"])
    assert isinstance(outcome.exception, InputError) and "/no/such.json: cannot read" in str(outcome.exception)


def test_rerun_resumes_from_saved_parts(results, monkeypatch, tmp_path):
    import shutil

    store, shared, settings, _ = results
    out = tmp_path / "r"  # the shared results stay as analyze wrote them
    shutil.copytree(shared, out)
    before = pd.read_csv(out / "probes.csv")
    from phonorm.analysis.layers import LayerRunner

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a layer that was already done")

    monkeypatch.setattr(LayerRunner, "start_layer", fail)
    monkeypatch.setattr(LayerRunner, "start_classic", fail)
    analyze(store, out=out, settings=settings.model_copy(update={"figures": False}))
    pd.testing.assert_frame_equal(before, pd.read_csv(out / "probes.csv"))


def test_bad_inputs_name_the_problem(results, tmp_path):
    store, _, settings, _ = results
    with pytest.raises(InputError, match="no model 'nope'"):
        analyze(store, out=tmp_path / "r", settings=settings.model_copy(update={"reference": "nope"}))
    (tmp_path / "not_a_store").mkdir()
    with pytest.raises(InputError, match="manifest.json"):
        analyze(tmp_path / "not_a_store", out=tmp_path / "r", settings=settings)


def test_cli_analyze(results, tmp_path):
    """The command line, with the closed-form probe: every probe and erasure row names it; the default
    analysis's rows name logistic regression."""
    from typer.testing import CliRunner

    from phonorm.cli import app

    store, default, _, _ = results
    outcome = CliRunner().invoke(app, ["analyze", str(store), "--reference", "pretrained", "--out",
                                       str(tmp_path / "r"), "--no-umap", "--folds", "2", "--probe", "lda"])
    assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "r" / "claims.json").is_file()
    for table in ("probes.csv", "erasure.csv"):
        assert set(pd.read_csv(tmp_path / "r" / table).probe) == {"lda"}
        assert set(pd.read_csv(default / table).probe) == {"logistic"}
    lda = pd.read_csv(tmp_path / "r" / "probes.csv")
    assert (lda.iterations == 0).all() and (lda.gradient == 0).all()


def test_umap_layers_are_first_middle_last():
    from phonorm.layers import umap_layers

    assert umap_layers([f"L{k}" for k in range(13)]) == ["L0", "L6", "L12"]
    assert umap_layers(["L0", "L1"]) == ["L0", "L1"] and umap_layers(["L0"]) == ["L0"]


def test_a_rerun_with_other_settings_leaves_no_stale_outputs(tmp_path):
    from fake_store import make_feature_store

    store = make_feature_store(tmp_path / "F", n_speakers=8, n_utterances=3, n_frames=30, n_layers=3)
    fast = dict(reference="pretrained", folds=3, labels=["sex"], progress=False,
                erasure=False, umap_fit_rows=50, sample_rows=400)
    analyze(store, out=tmp_path / "R", settings=AnalyzeSettings(umap=True, **fast))
    assert list((tmp_path / "R" / "figures").glob("umap_*"))
    analyze(store, out=tmp_path / "R", settings=AnalyzeSettings(umap=False, layer_matrix=False, **fast))
    assert not list((tmp_path / "R" / "figures").glob("umap_*"))
    assert not list((tmp_path / "R" / "layer_matrix").glob("*.csv"))
    listed = json.loads((tmp_path / "R" / "settings.json").read_text())["figures"]
    assert sorted(f"figures/{p.name}" for p in (tmp_path / "R" / "figures").iterdir()) == sorted(listed)


def test_matrix_on_sample_rows_and_sums_per_half_agree(tmp_path):
    """The layer matrix is computed on the sampled rows; keeping the pair sums per half instead of per
    speaker (memory cap) changes no value, only drops the jackknife intervals; the parts are timed."""
    from fake_store import make_feature_store
    from phonorm.analysis.measures import PairSums
    from phonorm.analysis.probes import sample_rows

    store = make_feature_store(tmp_path / "f", models=("pretrained", "tone"), n_speakers=6, n_utterances=2,
                               n_frames=30, n_layers=2)
    # float64 products: the sums per speaker and per half agree to rounding (float32 products: to 1e-7)
    common = dict(reference="pretrained", umap=False, figures=False, folds=2, products="float64",
                  sample_rows=200, erasure=False, labels=["sex"], progress=False, similarity_jackknife=True)
    analyze(store, out=tmp_path / "speakers", settings=AnalyzeSettings(**common))
    analyze(store, out=tmp_path / "halves", settings=AnalyzeSettings(**common, speaker_sums_max_bytes=0))
    by_speaker = pd.read_csv(tmp_path / "speakers" / "similarity.csv")
    by_half = pd.read_csv(tmp_path / "halves" / "similarity.csv")
    for column in ("value", "floor", "held_out_value", "held_out_floor"):
        np.testing.assert_allclose(by_half[column], by_speaker[column], atol=1e-9, err_msg=column)
    assert by_speaker.ci_low.notna().all() and by_half.ci_low.isna().all()
    assert by_speaker.ci_method.str.startswith("delete-one-speaker jackknife t").all()

    features = FeatureStore(store)
    sample = sample_rows(features.frames, 200, 0)
    assert 0 < len(sample) < features.rows
    x = np.concatenate(list(features.iter_blocks("tone", "L1", rows=sample)))
    y = np.concatenate(list(features.iter_blocks("pretrained", "L0", rows=sample)))
    matrix = pd.read_csv(tmp_path / "speakers" / "layer_matrix" / "tone__vs__pretrained__cka.csv", index_col=0)
    assert matrix.loc["L1", "L0"] == pytest.approx(PairSums.of(x, y).cka(), abs=1e-9)
    seconds = json.loads((tmp_path / "speakers" / "settings.json").read_text())["seconds"]
    assert {"similarity sums (all rows)", "similarity measures", "probes and erasure"} <= set(seconds)


def test_cuda_asked_without_a_gpu_is_a_clear_error():
    torch = pytest.importorskip("torch")
    from phonorm.analyze import TorchKernels
    from phonorm.errors import PhonormError

    assert TorchKernels.of("cpu").device == "cpu"
    if not torch.cuda.is_available():
        assert TorchKernels.of("auto").device == "cpu"
        with pytest.raises(PhonormError, match="--device cuda"):
            TorchKernels.of("cuda")


@pytest.mark.parametrize("unlabelled", [0.0, 0.1, 0.7])
def test_group_sums_equal_a_direct_computation(unlabelled):
    from phonorm.analysis.normalization import GroupSums

    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 7)) * 3 + 40
    codes = rng.integers(0, 5, len(x))
    codes[rng.random(len(x)) < unlabelled] = -1
    shift = x[:50].mean(0)
    sums = GroupSums(5, 7, shift)
    for begin in range(0, len(x), 128):  # blocks, as the streamed pass adds them
        sums.update_shifted(x[begin:begin + 128] - shift, codes[begin:begin + 128])
    kept, labels = x[codes >= 0] - shift, codes[codes >= 0]
    np.testing.assert_array_equal(sums.counts, np.bincount(labels, minlength=5))
    np.testing.assert_allclose(sums.sums, [kept[labels == g].sum(0) for g in range(5)], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(sums.squares, (kept ** 2).sum(0), rtol=1e-12)
    total = ((kept - kept.mean(0)) ** 2).sum()
    between = sum((labels == g).sum() * ((kept[labels == g].mean(0) - kept.mean(0)) ** 2).sum() for g in range(5))
    assert sums.variance_share()["share"] == pytest.approx(between / total, rel=1e-9)


def test_silhouettes_of_labels_on_the_same_rows_share_their_distances(monkeypatch):
    """Labels on the same rows share one draw and one distance matrix, and each label's value is
    scikit-learn's silhouette of that label on the drawn rows; a label on other rows draws its own."""
    import sklearn.metrics
    from sklearn.metrics import silhouette_score

    from phonorm.analysis.normalization import silhouettes

    rng = np.random.default_rng(3)
    x = rng.normal(size=(900, 12)).astype(np.float32)
    speaker = rng.integers(0, 6, 900)
    x[:, :4] += 4 * speaker[:, None]  # something to find
    sex, tone = speaker % 2, rng.integers(0, 4, 900)
    everyone = np.arange(900)
    voiced = np.flatnonzero(rng.random(900) < 0.6)
    labelled = {"speaker": (everyone, speaker), "sex": (everyone, sex), "tone": (voiced, tone[voiced]),
                "none": (everyone, np.zeros(900, int))}
    computed: list[int] = []
    real = sklearn.metrics.pairwise_distances

    def counted(a, *args, **kwargs):
        computed.append(len(a))
        return real(a, *args, **kwargs)

    monkeypatch.setattr(sklearn.metrics, "pairwise_distances", counted)
    values = silhouettes(x, labelled, seed=5, max_rows=400)
    assert computed == [400, 400]  # one matrix for the three labels on every row, one for the voiced rows
    for name in ("speaker", "sex", "tone"):
        index, labels = labelled[name]
        take = np.random.default_rng(5).choice(len(index), size=400, replace=False)
        expected = silhouette_score(x[index[take]].astype(np.float64), labels[take])
        assert values[name] == pytest.approx(expected, abs=1e-12)
    assert values["speaker"] > 0.05 and np.isnan(values["none"])


def test_the_command_line_starts_openblas_single_threaded():
    """`analyze` calls BLAS from its own worker threads: OpenBLAS must start without its thread pool
    (set by phonorm.cli before NumPy loads), unless the user chose otherwise."""
    import os
    import subprocess
    import sys

    code = ("import phonorm.cli, numpy, threadpoolctl; "
            "print(max(i['num_threads'] for i in threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "1"
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "OPENBLAS_NUM_THREADS": "2"},
                            capture_output=True, text=True, check=True).stdout.strip()
    assert chosen == ("2" if (os.cpu_count() or 1) >= 2 else "1")  # OpenBLAS caps it at the cores


def test_sample_products_in_blocks_give_the_matrix_of_one_block(tmp_path, monkeypatch):
    """The layer-matrix sums are taken `SAMPLE_BLOCK` rows at a time (slices of a contiguous sample,
    position arrays for the held-out halves); any block size gives the same matrix."""
    from fake_store import make_feature_store
    from phonorm.analysis import sums as run

    rows = np.arange(5, 45)
    monkeypatch.setattr(run, "SAMPLE_BLOCK", 16)
    blocks = list(run._row_blocks(rows))
    assert all(isinstance(b, slice) for b in blocks) and np.array_equal(np.r_[tuple(blocks)], rows)
    scattered = rows[rows % 3 != 0]
    pieces = list(run._row_blocks(scattered))
    assert [len(p) for p in pieces] == [16, len(scattered) - 16] and np.array_equal(np.concatenate(pieces), scattered)

    store = make_feature_store(tmp_path / "f", models=("pretrained", "tone"), n_speakers=6, n_utterances=2,
                               n_frames=30, n_layers=2)
    common = dict(reference="pretrained", umap=False, figures=False, folds=2, products="float64",
                  sample_rows=200, erasure=False, labels=["sex"], progress=False, similarity_floor=False)
    for held_out in (False, True):
        tables = []
        for block in (16, 4096):
            monkeypatch.setattr(run, "SAMPLE_BLOCK", block)
            out = tmp_path / f"{held_out}-{block}"
            analyze(store, out=out, settings=AnalyzeSettings(**common, held_out=held_out))
            tables.append(pd.read_csv(out / "layer_matrix" / "tone__vs__pretrained__pwcca.csv", index_col=0))
        np.testing.assert_allclose(tables[0].to_numpy(), tables[1].to_numpy(), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- interrupted over earlier results
FAST = dict(reference="pretrained", folds=2, labels=["sex", "tone"], progress=False,
            umap=False, erasure=False, sample_rows=400)


def _killed_at(monkeypatch, module, writer: str, when) -> None:
    """Make `module.writer` raise KeyboardInterrupt (a kill) when `when(path)` holds, else write."""
    real = getattr(module, writer)

    def write(path, *args, **kwargs):
        if when(Path(path)):
            raise KeyboardInterrupt(f"killed while writing {path}")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, writer, write)


# Points at which a kill lands: a projection while the layers run, a table, the claims, the completion
# record: (the module that writes it, its writer, which file).
KILL_POINTS = {
    "first projection": ("phonorm.analysis.steps", "write_parquet", lambda p: p.parent.name == "projections"),
    "probes.csv": ("phonorm.analysis.tables", "write_csv", lambda p: p.name == "probes.csv"),
    "claims.json": ("phonorm.artifacts", "write_json", lambda p: p.name == "claims.json"),  # ClaimsFile.write
    "settings.json": ("phonorm.artifacts", "write_json", lambda p: p.name == "settings.json"),  # AnalysisRecord.write
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_an_analysis_killed_over_earlier_results_is_unfinished_until_rerun(point, tmp_path, monkeypatch):
    """Killing analyze over a finished results folder never leaves a mix that validate passes or report
    builds from; running it again completes it."""
    import importlib

    from fake_store import make_feature_store
    from phonorm.report.html import build_report
    from phonorm.validate import validate

    store = make_feature_store(tmp_path / "F", models=("pretrained", "tone"), n_speakers=6, n_utterances=2,
                               n_frames=20, n_layers=2)
    out = tmp_path / "R"
    analyze(store, out=out, settings=AnalyzeSettings(seed=1, **FAST))
    assert validate(out).ok
    module, writer, when = KILL_POINTS[point]
    with monkeypatch.context() as patch:
        _killed_at(patch, importlib.import_module(module), writer, when)
        with pytest.raises(KeyboardInterrupt):
            analyze(store, out=out, settings=AnalyzeSettings(seed=2, **FAST))  # other numbers than the first run
    verdict = validate(out)
    assert not verdict.ok and verdict.kind == "unfinished analysis results", verdict.text()
    assert verdict.problems[0].startswith("settings.json: missing"), verdict.text()
    with pytest.raises(InputError, match="settings.json: missing"):
        build_report(out, out=tmp_path / "report.html")
    analyze(store, out=out, settings=AnalyzeSettings(seed=2, **FAST))
    assert validate(out).ok
    assert json.loads((out / "settings.json").read_text())["settings"]["seed"] == 2
    build_report(out, out=tmp_path / "report.html")


def test_a_layer_with_nan_rows_is_named_not_a_linalg_error(tmp_path):
    from fake_store import make_feature_store

    store = make_feature_store(tmp_path / "F", models=("pretrained", "tone"), n_speakers=6, n_utterances=2,
                               n_frames=20, n_layers=2)
    layer = store / "tone" / "L1.npy"
    array = np.load(layer)
    array[[5, 9]] = np.nan
    np.save(layer, array)
    with pytest.raises(InputError, match=r"tone/L1.npy: row 5 of model 'tone' layer L1 holds NaN or inf \(2 such rows"):
        analyze(store, out=tmp_path / "R", settings=AnalyzeSettings(**FAST))


def test_more_folds_than_speakers_is_said_not_silent(tmp_path):
    from fake_store import make_feature_store

    store = make_feature_store(tmp_path / "F", n_speakers=6, n_utterances=2, n_frames=20, n_layers=1)
    line = analyze(store, out=tmp_path / "R", settings=AnalyzeSettings(**{**FAST, "folds": 50,
                                                                           "labels": ["sex", "speaker"],
                                                                           "layer_matrix": False, "figures": False}))
    used = pd.read_csv(tmp_path / "R" / "probes.csv").groupby("label").folds.min()
    # each label's own count: speaker-disjoint sex folds (at most 6 speakers), utterance folds for speaker
    assert used["sex"] <= 6 and used["speaker"] > used["sex"]
    assert f"50 folds asked, used: sex {used['sex']}, speaker {used['speaker']}" in line


def test_saved_layers_are_reused_only_when_their_inputs_are_the_same(tmp_path, monkeypatch):
    """A layer's saved result is keyed by what it was computed from (`LayerSettings`, the store, the
    code): a rerun that changes only how the work runs reuses it; one that changes a number does not."""
    from fake_store import make_feature_store
    from phonorm.analysis.layers import LayerRunner

    store = make_feature_store(tmp_path / "F", models=("pretrained", "tone"), n_speakers=4, n_utterances=2,
                               n_frames=20, n_layers=1)
    common = {**FAST, "labels": ["sex"], "layer_matrix": False, "figures": False}
    analyze(store, out=tmp_path / "R", settings=AnalyzeSettings(**common))
    computed: list[str] = []
    real = LayerRunner.start_layer

    def counted(self, model, layer):
        computed.append(f"{model} {layer}")
        return real(self, model, layer)

    monkeypatch.setattr(LayerRunner, "start_layer", counted)
    analyze(store, out=tmp_path / "R", settings=AnalyzeSettings(**common, block=7, workers=1, device="cpu"))
    assert computed == []
    analyze(store, out=tmp_path / "R", settings=AnalyzeSettings(**common, svcca_dims=3))
    assert sorted(computed) == ["pretrained L0", "tone L0"]
    assert pd.read_csv(tmp_path / "R" / "similarity.csv").shape[0] == 5


def test_layers_extracted_again_from_a_retrained_model_are_analysed_again(fake_corpus, tmp_path, monkeypatch):
    """Delete a store, extract it again at the same path from a model retrained at the same path, and
    analyse into the same folder: the retrained model's layers are computed afresh (its files' key is in
    the manifest, and a saved layer is reused only with the manifest's models unchanged); before, every
    saved layer was reused and the results were the old model's."""
    import time

    import torch
    from transformers import Wav2Vec2Model

    from phonorm.analysis.layers import LayerRunner
    from phonorm.features.extract import ExtractSettings, extract
    from phonorm.models.backbone import make_config

    def save_model(folder, seed):
        torch.manual_seed(seed)
        Wav2Vec2Model(make_config("tiny")).save_pretrained(folder)

    models = {"pre": str(tmp_path / "pre"), "ft": str(tmp_path / "ft")}
    save_model(models["pre"], 0)
    save_model(models["ft"], 1)
    extract_settings = ExtractSettings(layers="0,4", max_per_speaker_label=5)
    settings = AnalyzeSettings(**{**FAST, "labels": ["sex"], "layer_matrix": False, "figures": False,
                                  "reference": "pre"})
    extract(fake_corpus, models=models, out=tmp_path / "F", settings=extract_settings)
    analyze(tmp_path / "F", out=tmp_path / "R", settings=settings)
    before = pd.read_csv(tmp_path / "R" / "similarity.csv")

    import shutil

    shutil.rmtree(tmp_path / "F")
    time.sleep(1.1)  # a retrained model's files are newer
    save_model(models["ft"], 2)
    extract(fake_corpus, models=models, out=tmp_path / "F", settings=extract_settings)
    computed: list[str] = []
    real = LayerRunner.start_layer

    def counted(self, model, layer):
        computed.append(f"{model} {layer}")
        return real(self, model, layer)

    monkeypatch.setattr(LayerRunner, "start_layer", counted)
    analyze(tmp_path / "F", out=tmp_path / "R", settings=settings)
    assert {"ft L0", "ft L4"} <= set(computed)
    after = pd.read_csv(tmp_path / "R" / "similarity.csv")
    assert not np.allclose(before.query("model == 'ft'").value, after.query("model == 'ft'").value)


def test_the_device_path_gives_the_numbers_of_the_cpu_path(tmp_path):
    """The GPU code path without a GPU: kernels whose 'device' keeps torch tensors on the CPU send every
    streamed block through `Kernels.to_device` and every logistic probe through `logistic_on_device`
    (the torch L-BFGS probe); similarity, variance shares and probe accuracies match the NumPy path."""
    from dataclasses import dataclass

    import torch

    from fake_store import make_feature_store
    from phonorm.analysis import run
    from phonorm.analysis.probes import FoldFit
    from phonorm.analyze import TorchKernels, TorchLogisticProbe

    used: list[int] = []
    moved: list[int] = []

    @dataclass(frozen=True)
    class TensorsOnCpu(TorchKernels):
        device: str = "cpu tensors"

        def to_device(self, block):
            moved.append(len(block))
            return torch.from_numpy(np.array(block))

        def logistic_on_device(self, x_train, y_train, x_test, max_iter):
            model = TorchLogisticProbe(max_iter=max_iter, device="cpu").fit(x_train, y_train)
            used.append(len(x_train))
            return FoldFit(model.predict(x_test), model.n_iter_, model.converged_, model.gradient_)

    store = make_feature_store(tmp_path / "F", models=("pretrained", "tone"), n_speakers=6, n_utterances=2,
                               n_frames=20, n_layers=2)
    settings = AnalyzeSettings(reference="pretrained", folds=2, labels=["sex", "tone"], umap=False, erasure=False,
                               figures=False, progress=False, workers=1)
    run.analyze(store, out=tmp_path / "numpy", settings=settings, kernels=TorchKernels("cpu"))
    run.analyze(store, out=tmp_path / "tensors", settings=settings, kernels=TensorsOnCpu())
    assert used and moved  # the probes and the streamed blocks went through the device path
    numpy_sim, tensor_sim = (pd.read_csv(tmp_path / d / "similarity.csv") for d in ("numpy", "tensors"))
    np.testing.assert_allclose(tensor_sim.value, numpy_sim.value, atol=1e-6)
    numpy_norm, tensor_norm = (pd.read_csv(tmp_path / d / "normalization.csv") for d in ("numpy", "tensors"))
    np.testing.assert_allclose(tensor_norm.value, numpy_norm.value, atol=1e-6)
    numpy_probes, tensor_probes = (pd.read_csv(tmp_path / d / "probes.csv") for d in ("numpy", "tensors"))
    np.testing.assert_allclose(tensor_probes.accuracy, numpy_probes.accuracy, atol=0.02)
    record = json.loads((tmp_path / "tensors" / "settings.json").read_text())
    assert record["device"] == "cpu tensors"


def test_a_layers_probes_run_on_while_the_next_layer_starts(tmp_path, monkeypatch):
    """`run._run_layers` starts layer i+1 before it waits for layer i's probes (no worker idles through a
    layer's last folds), and each layer's probes are submitted most classes first; the tables are those
    of a run that waited for every layer before the next (the rows depend on the rows, not on the order)."""
    from fake_store import make_feature_store
    from phonorm.analysis import steps
    from phonorm.analysis.layers import LayerRunner

    store = make_feature_store(tmp_path / "F", models=("pretrained", "tone"), n_speakers=4, n_utterances=2,
                               n_frames=20, n_layers=2)
    settings = AnalyzeSettings(**{**FAST, "labels": ["sex", "phone", "tone"], "layer_matrix": False,
                                  "figures": False})
    events: list[str] = []
    real_start = LayerRunner.start_layer

    def start(self, model, layer):
        events.append(f"start {model} {layer}")
        finish = real_start(self, model, layer)

        def finished():
            events.append(f"finish {model} {layer}")
            return finish()
        return finished

    submitted: list[str] = []
    real_probe = steps.start_probe

    def probe(x, values, *args, **kwargs):
        submitted.append(f"{len(np.unique(values))} classes")
        return real_probe(x, values, *args, **kwargs)

    monkeypatch.setattr(LayerRunner, "start_layer", start)
    monkeypatch.setattr(steps, "start_probe", probe)
    analyze(store, out=tmp_path / "R", settings=settings)
    assert events[:4] == ["start pretrained L0", "start tone L0", "finish pretrained L0", "start pretrained L1"]
    assert events[-1] == "finish tone L1" and len(events) == 8
    counts = [int(s.split()[0]) for s in submitted]
    assert all(counts[i:i + 3] == sorted(counts[i:i + 3], reverse=True) for i in range(0, len(counts), 3))
    assert counts[0] > 2  # phone or tone before sex
    probes = pd.read_csv(tmp_path / "R" / "probes.csv")
    assert list(probes.label.unique()) == ["sex", "phone", "tone"]  # listed in the settings' order
    seconds = json.loads((tmp_path / "R" / ".parts" / "tone__L0.json").read_text())["result"]["seconds"]
    assert seconds["probes and erasure"] > 0 and "similarity sums (all rows)" in seconds

    monkeypatch.undo()
    one_by_one = tmp_path / "R1"
    real_run = LayerRunner.start_layer_result
    monkeypatch.setattr(LayerRunner, "start_layer_result",
                        lambda self, m, layer: (lambda done: (lambda: done))(real_run(self, m, layer)()))
    analyze(store, out=one_by_one, settings=settings)
    pd.testing.assert_frame_equal(probes, pd.read_csv(one_by_one / "probes.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "R" / "similarity.csv"),
                                  pd.read_csv(one_by_one / "similarity.csv"))
