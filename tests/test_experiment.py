"""`phonorm run`: config validation and the stage cache (with cheap fake stage functions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import BASE, FakeStages
from helpers import write_yaml as _write
from phonorm import experiment as ex
from phonorm.errors import InputError
from phonorm.experiment import cache, hub

REAL_HUB_CHECK = hub.hub_model_problem

# --------------------------------------------------------------------------- config validation
def _with(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        target = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
        last = parts[-1]
        target[int(last) if last.isdigit() else last] = value
    return data


def _error(tmp_path, data) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as err:
        ex.load_experiment(path)
    message = str(err.value)
    assert str(path) in message, "the error names the YAML file"
    return message


def test_valid_config_loads_with_defaults_and_resolved_workdir(tmp_path):
    experiment, base = ex.load_experiment(_write(tmp_path, BASE))
    assert base == tmp_path.resolve()
    assert experiment.workdir == tmp_path.resolve() / "runs" / "t"
    assert experiment.finetune[1].tasks == ["sex"]  # "sex" as on the command line
    assert experiment.reference == "pre" and experiment.store_models == ["pre", "tone", "sex"]


@pytest.mark.parametrize("changes, expected", [
    ({"finetune.0.settings.lrr": 0.1}, ["finetune[0].settings.lrr", "unknown field", "lr"]),
    ({"pretrain.0.steps": "many"}, ["pretrain[0].steps", "'many'", "expected", "integer"]),
    ({"pretrain.0.steps": 0}, ["pretrain[0].steps", "got 0", "greater than or equal to 1"]),
    ({"finetune.0.tasks": ["tones"]}, ["finetune[0].tasks[0]", "'tones'", "'tone', 'phone' or 'sex'"]),
    ({"finetune.0.tasks": ["tone", "tone"]}, ["finetune[0].tasks", "each task at most once"]),
    ({"extract.frames": "some"}, ["extract.frames", "'some'", "'labelled', 'middle' or 'all'"]),
    ({"analyze.reference": "nope"}, ["analyze.reference", "'nope'", "pre, tone, sex"]),
    ({"corpus.prepared": "x"}, ["corpus", "exactly one of prepared, synth, prepare, aishell"]),
    ({"finetune.1.name": "tone"}, ["given more than once: tone"]),
    ({"name": "my run/1"}, ["name", "'my run/1'", "letters, digits"]),
])
def test_wrong_config_names_field_value_and_expectation(tmp_path, changes, expected):
    message = _error(tmp_path, _with(**changes))
    for part in expected:
        assert part in message, f"{part!r} missing from: {message}"


def test_missing_field_and_top_level_unknown_field(tmp_path):
    data = _with()
    del data["corpus"]
    data["pretrian"] = []
    message = _error(tmp_path, data)
    assert "corpus: missing" in message
    assert "pretrian: unknown field" in message and "pretrain" in message


def test_bad_base_and_missing_paths_are_reported(tmp_path):
    assert "finetune[0].base" in _error(tmp_path, _with(**{"finetune.0.base": "not a model!"}))
    message = _error(tmp_path, _with(**{"finetune.0.base": "./no/such/folder"}))
    assert "finetune[0].base" in message and "no folder" in message
    data = _with(corpus={"prepared": "missing_corpus"})
    message = _error(tmp_path, data)
    assert "corpus.prepared" in message and "missing_corpus" in message


def test_yaml_syntax_error_gives_line(tmp_path):
    message = _error(tmp_path, "name: t\ncorpus: {synth: {speakers: 4}\n")
    assert "not valid YAML" in message and "line" in message


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    (tmp_path / "sub" / "corpus").mkdir(parents=True)
    for name in ("utterances.parquet", "segments.parquet", "labels.json"):
        (tmp_path / "sub" / "corpus" / name).write_text("")
    (tmp_path / "sub" / "models" / "base").mkdir(parents=True)
    data = {"name": "t", "corpus": {"prepared": "corpus"}, "models": {"pre": "models/base"},
            "finetune": [{"name": "tone", "base": "pre", "tasks": ["tone"]},
                         {"name": "hub", "base": "org/some-model", "tasks": ["sex"]}],
            "workdir": "out"}
    experiment, _ = ex.load_experiment(_write(tmp_path / "sub", data))
    assert experiment.corpus.prepared == (tmp_path / "sub" / "corpus").resolve()
    assert experiment.models["pre"] == str((tmp_path / "sub" / "models" / "base").resolve())
    assert experiment.finetune[1].base == "org/some-model"  # a hub id stays a hub id
    assert experiment.workdir == (tmp_path / "sub" / "out").resolve()


def test_cli_run_with_a_wrong_config_exits_2_with_one_line(tmp_path):
    path = _write(tmp_path, _with(**{"pretrain.0.size": "huge"}))
    done = subprocess.run([sys.executable, "-m", "phonorm.cli", "run", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "pretrain[0].size" in done.stderr and "'huge'" in done.stderr and "Traceback" not in done.stderr


def test_each_stage_declares_its_settings_once_for_api_yaml_and_cli():
    """The YAML nests the stage's own settings class, and the CLI's options are made from its fields
    (same names, defaults and help): nothing to drift."""
    import typer.main

    from phonorm import settings as st
    from phonorm.cli import app
    from phonorm.experiment import config
    from phonorm.settings.analyze import AnalyzeSettings

    assert issubclass(config.PretrainConfig, st.PretrainSettings)
    assert config.FinetuneConfig.model_fields["settings"].annotation is st.FinetuneSettings
    assert issubclass(config.ExtractConfig, st.ExtractSettings) and issubclass(config.AnalyzeConfig, AnalyzeSettings)
    commands = typer.main.get_command(app).commands
    assert issubclass(config.PrepareCorpus, st.PrepareSettings) and issubclass(config.AishellCorpus, st.AishellSettings)
    assert issubclass(config.SynthCorpus, st.SynthSettings)
    for command, model in (("synth", st.SynthSettings), ("prepare", st.PrepareSettings), ("prepare-aishell", st.AishellSettings),
                           ("pretrain", st.PretrainSettings), ("finetune", st.FinetuneSettings),
                           ("extract", st.ExtractSettings), ("analyze", AnalyzeSettings)):
        options = {p.name: p for p in commands[command].params}
        for name, field in model.model_fields.items():
            assert name in options, (command, name)
            repeatable = (field.json_schema_extra or {}).get("cli") == "repeat"
            if not field.is_required() and field.default_factory is None and not repeatable:
                assert options[name].default == field.default, (command, name)
            if (field.json_schema_extra or {}).get("cli") == "repeat":
                assert options[name].multiple, (command, name)
            assert options[name].help.startswith((field.description or "")[:20]), (command, name)


def test_yaml_settings_errors_name_the_yaml_field(tmp_path):
    import copy

    data = copy.deepcopy(BASE)
    data["finetune"][0]["settings"] = {"lr": -1}
    with pytest.raises(InputError, match=r"finetune\[0\]\.settings\.lr"):
        ex.load_experiment(_write(tmp_path, data))
    data["finetune"][0]["settings"] = {"loss_weights": {"phone": 1.0}}
    with pytest.raises(InputError, match="loss_weights"):
        ex.load_experiment(_write(tmp_path, data))


def test_demo_experiments_are_valid_and_the_example_matches_the_packaged_one(tmp_path):
    root = Path(__file__).resolve().parents[1]
    example = yaml.safe_load((root / "examples" / "demo.yaml").read_text())
    packaged = yaml.safe_load(ex.demo_config_text(quick=False))
    example.pop("workdir")
    assert example == packaged
    for quick in (False, True):
        path = _write(tmp_path, ex.demo_config_text(quick), f"demo-{quick}.yaml")
        experiment, _ = ex.load_experiment(path)
        assert [f.tasks for f in experiment.finetune] == [["tone"], ["phone"], ["sex"], ["tone", "sex"]]
    aishell = (root / "examples" / "aishell.yaml").read_text()
    data = yaml.safe_load(aishell)
    assert data["models"]["pre"] == "TencentGameMate/chinese-wav2vec2-base"
    assert sorted(tuple(f["tasks"]) for f in data["finetune"]) == sorted(
        [("tone",), ("phone",), ("sex",), ("tone", "sex")])


# --------------------------------------------------------------------------- stage cache
ALL = ["analyze:analyze", "corpus:corpus", "evaluate:sex", "evaluate:tone", "extract:extract", "finetune:sex",
       "finetune:tone", "pretrain:pre", "report:report", "synth:synth"]


@pytest.fixture
def fakes(monkeypatch):
    return FakeStages(monkeypatch)


def test_rerun_redoes_nothing_and_a_changed_setting_redoes_only_its_dependents(tmp_path, fakes):
    path = _write(tmp_path, BASE)
    summary = ex.run_experiment(path)
    assert fakes.take() == ALL
    pre = next((tmp_path / "runs" / "t" / "pretrain").glob("pre-*"))
    assert fakes.models == {"tone": str(pre), "sex": str(pre)}, "fine-tuned from the pretrain stage's folder"
    assert list(fakes.stored) == ["pre", "tone", "sex"], "the reference first"
    assert summary.strip().endswith(str(tmp_path.resolve() / "runs" / "t" / "report.html"))
    assert (tmp_path / "runs" / "t" / "report.html").is_file()

    ex.run_experiment(path)
    assert fakes.take() == [], "nothing changed: nothing redone"

    _write(tmp_path, _with(**{"finetune.1.settings.epochs": 2}))
    ex.run_experiment(path)
    assert fakes.take() == ["analyze:analyze", "evaluate:sex", "extract:extract", "finetune:sex", "report:report"]

    _write(tmp_path, _with(**{"finetune.1.settings.epochs": 2, "analyze.probe_max_iter": 60}))
    ex.run_experiment(path)
    assert fakes.take() == ["analyze:analyze", "report:report"]

    _write(tmp_path, _with(**{"finetune.1.settings.epochs": 2, "analyze.probe_max_iter": 60, "pretrain.0.steps": 6}))
    ex.run_experiment(path)
    assert fakes.take() == [k for k in ALL if k not in ("synth:synth", "corpus:corpus")]

    # switching back to earlier settings finds their folders still in the cache
    _write(tmp_path, BASE)
    ex.run_experiment(path)
    assert fakes.take() == []


def test_changed_code_of_one_stage_redoes_that_stage_and_what_follows(tmp_path, fakes, monkeypatch):
    path = _write(tmp_path, BASE)
    ex.run_experiment(path)
    fakes.take()
    real = cache.stage_code_hash
    monkeypatch.setattr(cache, "stage_code_hash", lambda stage: real(stage) + ("edited" if stage == "extract" else ""))
    ex.run_experiment(path)
    assert fakes.take() == ["analyze:analyze", "extract:extract", "report:report"]


def test_interrupted_run_resumes_in_the_same_folder(tmp_path, fakes):
    path = _write(tmp_path, BASE)
    fakes.fail.add("finetune:sex")
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment(path)
    first = fakes.take()
    assert "finetune:sex" in first and "extract:extract" not in first
    interrupted = next((tmp_path / "runs" / "t" / "finetune").glob("sex-*"))
    assert not (interrupted / cache.MARKER).exists(), "an interrupted stage is not marked complete"
    ex.run_experiment(path)
    again = fakes.take()
    assert again == ["analyze:analyze", "evaluate:sex", "extract:extract", "finetune:sex", "report:report"]
    assert (interrupted / "partial").is_file() and (interrupted / cache.MARKER).is_file(), "resumed in its folder"
    ex.run_experiment(path, force=True)
    assert fakes.take() == ALL


def test_stage_code_hash_covers_what_the_stage_imports_and_nothing_else():
    import phonorm
    from phonorm.artifacts import _import_closure

    root = Path(phonorm.__file__).resolve().parent
    finetune = {p.relative_to(root).as_posix() for p in _import_closure("phonorm.models.finetune", root)}
    assert {"models/finetune.py", "models/backbone.py", "frames.py", "artifacts.py", "corpus/store.py",
            "__init__.py", "models/__init__.py"} <= finetune
    assert not any(p.startswith(("report/", "analysis/", "features/")) for p in finetune)
    report = {p.relative_to(root).as_posix() for p in _import_closure("phonorm.report.html", root)}
    assert "figures.py" in report and "corpus/info.py" in report
    assert not any(p.startswith("models/") for p in report)  # the model card is a record (records/card.py)
    assert not any(p.startswith("features/") and p not in ("features/__init__.py", "features/layout.py", "features/store.py", "features/manifest.py") for p in report), report


def test_aishell_example_runs_with_a_hub_model_through_the_stages(tmp_path, fakes):
    """examples/aishell.yaml with its data folders made up: the hub id reaches finetune and extract as is."""
    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "examples" / "aishell.yaml").read_text())
    for key in ("root", "alignments"):
        (tmp_path / key).mkdir()
        data["corpus"]["aishell"][key] = key
    data["workdir"] = "runs"
    ex.run_experiment(_write(tmp_path, data))
    assert fakes.models == {name: "TencentGameMate/chinese-wav2vec2-base" for name in ("tone", "phone", "sex", "tone_sex")}
    assert fakes.stored["pre"] == "TencentGameMate/chinese-wav2vec2-base" and list(fakes.stored)[0] == "pre"
    assert "corpus:corpus" in fakes.take()
    context = json.loads(next((tmp_path / "runs" / "report").glob("report-*/context.json")).read_text())
    assert context["models"][0] == {"name": "pre", "kind": "pretrained", "trained_here": False,
                                    "source": "TencentGameMate/chinese-wav2vec2-base", "folder": None,
                                    "tasks": None, "base": None}


def test_errors_come_before_any_stage_and_name_the_yaml_field(tmp_path):
    import copy

    def error(data, text=None):
        path = tmp_path / "exp.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(data), encoding="utf-8")
        with pytest.raises(InputError) as caught:
            ex.load_experiment(path)
        return str(caught.value)

    data = copy.deepcopy(BASE)
    data["finetune"][0]["base"] = "pree"  # a misspelt model name is no hub id
    assert "finetune[0].base" in error(data) and "pre" in error(data)
    (tmp_path / "models").mkdir()
    data["finetune"][0]["base"] = "models/pre"  # a relative folder that is not there
    assert "expected a model folder" in error(data)
    data = copy.deepcopy(BASE)
    data["corpus"] = {"synth": {"speakers": 4, "dev": 0.5, "test": 0.5}}
    assert "dev + test must be below 1" in error(data)
    data = copy.deepcopy(BASE)
    (tmp_path / "notacorpus").mkdir()
    data["corpus"] = {"prepared": "notacorpus"}
    assert "corpus.prepared" in error(data) and "labels.json" in error(data)
    data = copy.deepcopy(BASE)
    data["workdir"] = "afile"
    (tmp_path / "afile").write_text("x")
    assert "workdir" in error(data) and "it is a file" in error(data)
    text = yaml.safe_dump(BASE) + "name: again\n"
    assert "given twice" in error(None, text)
    data = copy.deepcopy(BASE)
    data["extract"] = {"layers": [0, 9]}  # the tiny model pre-trained here has L0..L4
    assert "extract.layers" in error(data) and "L0..L4" in error(data)


# --------------------------------------------------------------------------- hub ids up front
def _cached_hub_model(cache_dir: Path, repo_id: str) -> None:
    """What `hf download` leaves in the cache: refs/main → a snapshot holding config.json."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")


def test_an_unknown_hub_id_is_named_before_any_stage_runs(tmp_path, fakes, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.setattr(hub, "hub_model_problem", REAL_HUB_CHECK)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = _with()
    data["models"] = {"base": "someorg/wav2vec2-typo"}
    data["finetune"][1]["base"] = "base"
    path = _write(tmp_path, data)
    with pytest.raises(InputError, match=r"exp.yaml: models.base: 'someorg/wav2vec2-typo': not in the Hugging Face "
                                         r"cache .* download it first \(hf download someorg/wav2vec2-typo\)"):
        ex.run_experiment(path)
    assert fakes.calls == []  # neither synth nor corpus ran

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online: the hub is asked once, and says there is no such model
    asked = []

    def model_info(self, repo_id, **kwargs):
        asked.append(repo_id)
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Exception.__init__(error, "404")
        raise error

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", model_info)
    with pytest.raises(InputError, match="no such model on the Hugging Face hub"):
        ex.run_experiment(path)
    assert asked == ["someorg/wav2vec2-typo"] and fakes.calls == []

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # downloaded before: the cache holds it, offline runs go ahead
    _cached_hub_model(tmp_path / "hf", "someorg/wav2vec2-typo")
    ex.run_experiment(path)
    assert "finetune:sex" in fakes.kinds()


def test_a_second_hubert_iteration_runs_after_the_pretraining_whose_layer_it_clusters(tmp_path):
    """`targets_from: NAME` of an earlier pretrain entry makes that stage an input of this one: the
    plan orders them, and a change to the first changes the second's key."""
    from phonorm.experiment.plan import plan_stages

    data = _with(pretrain=[{"name": "pre", "steps": 5},
                           {"name": "pre2", "steps": 5, "targets_from": "pre", "targets_layer": 2}])
    experiment, _ = ex.load_experiment(_write(tmp_path, data))
    plan = plan_stages(experiment, tmp_path / "exp.yaml")
    first, second = plan.models["pre"], plan.models["pre2"]
    assert second.inputs["targets_from"] == first.key
    assert plan.stages.index(first) < plan.stages.index(second)
    data["pretrain"][0]["steps"] = 6
    experiment, _ = ex.load_experiment(_write(tmp_path, data))
    changed = plan_stages(experiment, tmp_path / "exp.yaml")
    assert changed.models["pre2"].key != second.key
    message = _error(tmp_path, _with(pretrain=[{"name": "pre", "steps": 5, "targets_from": "later",
                                                "targets_layer": 2}, {"name": "later", "steps": 5}]))
    assert "pretrain[0].targets_from" in message


def test_a_damaged_file_of_a_cached_stage_names_the_stage_and_the_remedy(tmp_path, fakes, monkeypatch):
    """A later stage meets a damaged file an earlier, cached stage wrote: the error says which stage the file
    belongs to and how to make it anew (delete its folder or --force), instead of the same failure each run."""
    from phonorm.errors import InputError, PhonormError

    path = _write(tmp_path, BASE)
    ex.run_experiment(path)
    pre = next((tmp_path / "runs" / "t" / "pretrain").glob("pre-*"))

    def damaged(corpus, *, model, out, settings):
        raise InputError(Path(model) / "model.safetensors", "damaged safetensors file (truncated)")

    monkeypatch.setattr(sys.modules["phonorm.models.finetune"], "finetune", damaged)
    changed = path.read_text().replace("epochs: 1", "epochs: 2")
    assert changed != path.read_text()
    path.write_text(changed)
    with pytest.raises(PhonormError, match=rf"model.safetensors: damaged safetensors file \(truncated\) \(the file "
                                           rf"belongs to the cached stage pretrain pre: delete {pre}, or run again "
                                           r"with --force, to make it anew\)"):
        ex.run_experiment(path)


def test_a_workdir_far_from_the_experiment_is_said(tmp_path, fakes, caplog, monkeypatch):
    """`workdir: ../../../../x` is allowed (a user may keep runs on another disk) but never silent."""
    import logging

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    far = tmp_path.parent / f"far-{tmp_path.name}"
    path = _write(tmp_path / "a" / "b", {**BASE, "workdir": str(far)})
    with caplog.at_level(logging.WARNING, logger="phonorm"):
        ex.run_experiment(path)
    assert any(f"workdir {far.resolve()} lies outside the experiment file's folder" in r.message for r in caplog.records)
    caplog.clear()
    near = _write(tmp_path / "a" / "b", {**BASE, "workdir": "../runs/t"}, name="near.yaml")
    with caplog.at_level(logging.WARNING, logger="phonorm"):
        ex.run_experiment(near)
    assert not any("lies outside" in r.message for r in caplog.records)
