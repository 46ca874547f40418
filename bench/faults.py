"""The fault table of the audit (120 faults tried as a new and an unlucky user would; the ones that
failed), each case with what must happen and the test that reproduces it, run here and printed:
case, severity, expected, test, got. The tests hold the cases (tests/test_faults.py and the modules of the
stage each concerns); this script runs them as one table.

Usage: python bench/faults.py [--list]     (the last line printed is JSON: tried, ok, and failures by severity)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = [  # (severity, case, expected, pytest node id)
    ("high", "stale analysis after re-extraction from a retrained model", "layers analysed again",
     "tests/test_analysis.py::test_layers_extracted_again_from_a_retrained_model_are_analysed_again"),
    ("high", "prepare over a prepared corpus with other inputs", "refused, earlier corpus kept",
     "tests/test_prepare.py::test_a_prepared_corpus_is_never_replaced_by_one_of_other_inputs"),
    ("high", "evaluate on the model's corpus folder prepared again", "refused, both fingerprints",
     "tests/test_evaluate.py::test_a_corpus_prepared_again_after_fine_tuning_is_refused"),
    ("high", "fine-tuning from a NaN base", "refused at load, naming the tensor",
     "tests/test_finetune.py::test_a_base_model_with_nan_weights_is_refused_by_name"),
    ("high", "a loss that turns NaN", "stopped at that step, nothing finished",
     "tests/test_finetune.py::test_a_loss_that_stops_being_finite_stops_training"),
    ("high", "synth on a full disk (a worker's write fails)", "one line, exit 2, in seconds",
     "tests/test_synth.py::test_a_write_failure_in_a_synth_worker_is_one_line_and_exit"),
    ("high", "a worker's error crossing a process boundary", "pickled whole",
     "tests/test_synth.py::test_every_phonorm_error_crosses_a_process_boundary_whole"),
    ("high", "validate a copied run folder with a truncated layer", "the copy's file named",
     "tests/test_validate.py::test_a_copied_run_folder_is_validated_where_it_now_lies"),
    ("high", "validate a Parquet file with a zeroed page", "named",
     "tests/test_validate.py::test_every_damaged_file_is_one_line_naming_it"
     "[frames.parquet with a zeroed page, its footer intact]"),
    ("high", "validate a similarity.csv cut mid-line", "named",
     "tests/test_validate.py::test_every_damaged_file_is_one_line_naming_it[similarity.csv cut mid-line]"),
    ("high", "validate a probes.csv cut at a line boundary", "named",
     "tests/test_validate.py::test_every_damaged_file_is_one_line_naming_it[probes.csv cut at a line boundary]"),
    ("high", "audio replaced after prepare", "extract names the file and both durations",
     "tests/test_extract.py::test_audio_replaced_after_prepare_is_refused_by_name"),
    ("medium", "a full disk as numpy and safetensors report it", "one line naming the file",
     "tests/test_artifacts.py::test_write_failures_are_recognised_as_the_libraries_report_them"),
    ("medium", "evaluate with truncated heads", "one line", "tests/test_faults.py::test_evaluate_with_truncated_heads"),
    ("medium", "extract from weights with a damaged header", "one line",
     "tests/test_faults.py::test_extract_from_weights_with_a_damaged_header"),
    ("medium", "a corrupt segments.parquet in info and finetune", "one line",
     "tests/test_faults.py::test_a_corrupt_segments_table"),
    ("medium", "--epochs 1e308", "one line naming --epochs", "tests/test_faults.py::test_epochs_beyond_any_run"),
    ("medium", "--folds 50 with few speakers", "each label's folds said",
     "tests/test_analysis.py::test_more_folds_than_speakers_is_said_not_silent"),
    ("medium", "export from a store with NaN rows", "refused, nothing written",
     "tests/test_export.py::test_a_layer_with_nan_rows_is_refused_not_exported"),
    ("low", "NaN in classic/mfcc.npy", "validate names it",
     "tests/test_validate.py::test_every_damaged_file_is_one_line_naming_it[classic mfcc.npy with a NaN row]"),
    ("low", "audio deleted after prepare", "validate names it",
     "tests/test_validate.py::test_audio_deleted_or_replaced_after_prepare_is_named"),
    ("low", "a TextGrid xmin of -0.5", "the negative time and its line",
     "tests/test_formats.py::test_a_time_before_zero_is_named_with_its_line"),
    ("low", "a damaged cached stage met again", "the stage and the remedy named",
     "tests/test_experiment.py::test_a_damaged_file_of_a_cached_stage_names_the_stage_and_the_remedy"),
    ("low", "validate right after a killed run", "not complete",
     "tests/test_validate.py::test_a_run_killed_over_an_earlier_one_is_not_complete"),
    ("low", "synth --speakers 1e8", "one line, at once",
     "tests/test_faults.py::test_a_synthetic_corpus_beyond_any_use_is_refused_at_once"),
    ("low", "--test 0", "no test speaker", "tests/test_prepare.py::test_default_split_is_balanced_and_deterministic"),
    ("low", "analyze --out the store; finetune --out the corpus", "refused before writing",
     "tests/test_faults.py::test_an_output_folder_that_is_the_input_is_refused"),
]
NOT_DONE = [  # cases of the audit with no fix yet, printed so that the table is the whole audit's
    ("low", "workdir: ../../../../etc/x writes there without a word", "a warning"),
    ("low", "silent audio accepted without a warning", "a warning from prepare"),
]


class _Outcomes:
    def __init__(self) -> None:
        self.got: dict[str, str] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.got[report.nodeid] = "failed"
        elif report.when == "call" or report.skipped:
            self.got.setdefault(report.nodeid, report.outcome)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the table without running it")
    args = parser.parse_args()
    import pytest

    outcomes = _Outcomes()
    if not args.list:
        pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), *[c[3] for c in CASES]],
                    plugins=[outcomes])
    print("\n| case | severity | expected | got | test |\n| --- | --- | --- | --- | --- |")
    counts = {"tried": len(CASES) + len(NOT_DONE), "ok": 0, "high": 0, "medium": 0, "low": 0}
    for severity, case, expected, node in CASES:
        got = outcomes.got.get(node, "not run")
        if got == "passed":
            counts["ok"] += 1
        else:
            counts[severity] += 1
        print(f"| {case} | {severity} | {expected} | {got} | `{node.split('::')[1]}` |")
    for severity, case, expected in NOT_DONE:
        counts[severity] += 1
        print(f"| {case} | {severity} | {expected} | not fixed | - |")
    print(json.dumps(counts))
    sys.exit(0)


if __name__ == "__main__":
    main()
