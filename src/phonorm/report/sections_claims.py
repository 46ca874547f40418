"""The report's sections on the claims (at a glance, and every comparison with its estimate, CI,
margin and verdict) and the methods (every setting and version, stage timings)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from phonorm.artifacts import code_version, library_versions
from phonorm.records.analysis import AnalysisRecord, ClaimCheck, ClaimsFile, Comparison
from phonorm.records.card import ModelCard
from phonorm.records.corpus import LabelsFile, SynthFile
from phonorm.report.page import (
    Page,
    Sources,
    as_path,
    esc,
    fmt,
    note,
    read_record,
    store_manifest,
    table,
)


def section_glance(page: Page, claims: Optional[ClaimsFile]) -> None:
    if not claims:
        return
    items = "".join(f'<li><span class="status {status_class(c.status)}">{esc(c.claim)}: '
                    f'{esc(c.status)}</span> {esc(c.statement)}</li>' for c in claims.claims)
    page.add("glance", "The claims at a glance",
             f"<p>Each claim of the study (Wang, Yang &amp; Yuan 2025) measured on this data; details in "
             f'<a href="#claims">the claim checks</a>.</p>{caveat_note(claims)}<ul class="glance">{items}</ul>')


def caveat_note(claims: ClaimsFile) -> str:
    """The caveat analyze attached to verdicts drawn from few speakers of a sex (analysis/caveats.py), as a
    paragraph; "" when there is none."""
    caveat = claims.caveat
    return f'<p class="caveat"><b>Caveat:</b> {esc(caveat)}.</p>' if caveat else ""



def status_class(status: Any) -> str:
    return {"holds": "ok", "does not hold": "bad", "inconclusive": "unsure", "partly tested": "unsure"}.get(
        str(status), "na")


def _ci(c: Comparison) -> str:
    """The interval with its level and method beside the number it is about."""
    if c.ci_low is None or c.ci_high is None:
        return "–"
    level = f"{c.ci_level:.0%} " if c.ci_level else ""
    return f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}] ({level}{c.ci_method or 'method not recorded'})"


def _comparisons(check: ClaimCheck) -> list[dict[str, Any]]:
    out = []
    for c in check.comparisons:
        out.append({
            "model": check.model, "comparison": c.name,
            "evidence": c.evidence + ("" if c.primary else " (beside)"),
            "values": f"{fmt(c.a_value)} vs {fmt(c.b_value)}",
            "estimate": f"{c.estimate:+.3f}" if c.estimate is not None else "–",
            "CI": _ci(c), "claimed": f"{c.direction} {c.margin}",
            # a comparison without a reason writes none: an empty cell, where a null one shows "–"
            "verdict": c.verdict, "note": c.reason if "reason" in c.model_fields_set else "",
        })
    return out


def section_claims(page: Page, claims: Optional[ClaimsFile]) -> None:
    if not claims:
        page.add("claims", "Claim checks", page.gap("claim checks: no claims.json"))
        return
    intervals = claims.intervals
    if intervals:
        how = (f"{esc(intervals.get('accuracies_and_differences'))} for accuracies and their differences, "
               f"{esc(intervals.get('similarity'))} for similarity; the same speakers on both sides of a difference. "
               "Each comparison names its method (claims.json <code>ci_method</code>)")
    else:  # claims.json written before the intervals were recorded
        boot = (claims.model_extra or {}).get("bootstrap") or {}
        how = (f"paired bootstrap over speakers ({esc(boot.get('resamples', '?'))} resamples; the same resampled "
               "speakers on both sides of a difference)")
    summary = "".join(
        f"<tr><td><b>{esc(c.claim)}</b></td><td>{esc(c.statement)}</td>"
        f"<td>{esc(c.criterion)}</td>"
        f"<td><span class=\"status {status_class(c.status)}\">{esc(c.status)}</span>"
        + (f"<p class=\"reason\">{esc(c.reason)}</p>" if c.reason else "")
        + "".join(f"<p class=\"reason\">{esc(f)}</p>" for f in c.fallback or [])
        + (f"<p class=\"reason\">basis: {esc(c.basis)}</p>" if c.basis else "")
        + "".join(f"<p class=\"reason\">warning: {esc(w)}</p>" for w in sorted({w for check in c.measured
                                                                               for w in check.warnings}))
        + "</td></tr>" for c in claims.claims)
    body = ("<p>Each claim is decided from estimates with 95% confidence intervals against a margin fixed in "
            "advance: it <b>holds</b> when every interval lies on the claimed side of its margin, <b>does not "
            f"hold</b> when one lies wholly on the other side, and is <b>inconclusive</b> otherwise; it is <b>not "
            "testable</b> when its premise fails (e.g. the reference does not linearly decode the factor a "
            "suppression would remove, or the fine-tuned model did not learn its task), whatever its other "
            "comparisons say, and <b>partly tested</b> when every tested part holds but a part it asserts could not "
            f"be tested (named): a claim never holds on a part that was not tested. Intervals: {how}. Primary evidence "
            "decides; evidence marked <i>beside</i> is shown for comparison. Top layer = the last stored layer of "
            "each model.</p>" + caveat_note(claims) +
            "<table class=\"claims\"><thead><tr><th>claim</th><th>statement</th><th>criterion</th>"
            f"<th>on this data</th></tr></thead><tbody>{summary}</tbody></table>")
    for c in claims.claims:
        rows = [r for check in c.measured for r in _comparisons(check)]
        if rows:
            body += (f"<h3>{esc(c.claim)}: the comparisons</h3>"
                     + table(rows, ["model", "comparison", "evidence", "values", "estimate", "CI", "claimed",
                                    "verdict", "note"]))
    missing = claims.evaluations_missing
    if missing:
        body += note(f"no evaluation (task accuracy) for {', '.join(missing)}: where it was needed the probes decided")
    constants = claims.constants
    if constants:
        body += "<p>Margins: " + esc(", ".join(f"{k} = {v}" for k, v in constants.items())) + "</p>"
    page.add("claims", "Claim checks", body)


def _kv(settings: dict[str, Any]) -> str:
    return table([{"setting": k, "value": json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v}
                  for k, v in settings.items()], ["setting", "value"], digits=6, cls="kv")


def section_methods(page: Page, results: Path, sources: Sources, settings: AnalysisRecord,
                    claims: Optional[ClaimsFile]) -> None:
    body = f"<p>Inputs found from {esc(sources.found_from)}.</p>"
    experiment = sources.context.experiment if sources.context else None
    if experiment is not None and experiment.config:
        import yaml

        body += (f"<h3>Experiment</h3><p>File <code>{esc(experiment.file)}</code>, as validated (paths "
                 f"resolved):</p><pre>{esc(yaml.safe_dump(experiment.config, sort_keys=False, allow_unicode=True))}</pre>")
    if sources.corpus is not None:
        labels = read_record(LabelsFile, sources.corpus / LabelsFile.FILE)
        corpus_settings = (labels.provenance.get("settings") or {}) if labels else {}
        body += "<h3>Corpus preparation</h3>" + _kv({"scheme": labels.scheme if labels else None,
                                                     "tone_mode": labels.tone_mode if labels else None,
                                                     **corpus_settings})
        synth = as_path(sources.context.synth if sources.context else None)
        synth_meta = read_record(SynthFile, synth / SynthFile.FILE) if synth else None
        if synth_meta:
            body += "<h4>Synthetic corpus</h4>" + _kv(synth_meta.settings or {"complete": synth_meta.complete})
    model_rows = []
    for model in sources.models:
        folder = as_path(model.folder)
        card = ModelCard.load_if_any(folder)
        meta = card.model_dump(mode="json") if card else {}
        model_rows.append({"model": model.name, "kind": model.kind,
                           "base / source": model.base or model.source or meta.get("base_model") or "",
                           "tasks": ",".join(model.tasks or meta.get("tasks") or []),
                           "model type": meta.get("model_type", ""),
                           "settings": json.dumps(meta.get("settings") or {}, ensure_ascii=False)})
    if model_rows:
        body += "<h3>Models</h3>" + table(model_rows, cls="kv")
    manifest = store_manifest(sources.features)
    if manifest is not None:
        body += "<h3>Extraction</h3>" + _kv({"rows": manifest.rows, **manifest.settings})
        body += table([m.model_dump(include={"name", "source", "model_type", "n_layers", "dim", "dtype",
                                             "layer_convention", "group_norm"}) for m in manifest.models],
                      ["name", "source", "model_type", "n_layers", "dim", "dtype", "layer_convention", "group_norm"])
    if settings.settings:
        body += "<h3>Analysis</h3>" + _kv({**settings.settings, "rows in store": settings.store_rows,
                                           "rows sampled for probes and maps": settings.sample_rows_used})
    stages = sources.context.stages if sources.context else []
    if stages:
        body += ("<h3>Stages</h3><p>Wall-clock and CPU seconds each stage took when it last ran (a cached "
                 "stage was not redone in this run).</p>"
                 + table([{k: s.get(k) for k in ("stage", "name", "status", "seconds", "cpu_seconds", "key", "folder")}
                          for s in stages], digits=1))
    provenance = settings.provenance
    versions = provenance.get("versions") or library_versions()
    body += ("<h3>Versions</h3>" + _kv({"phonorm (analysis)": provenance.get("code_version", "unknown"),
                                        "phonorm (report)": code_version(), **versions})
             + f"<p>Report written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))} from <code>{esc(results.resolve())}</code>.</p>")
    page.add("methods", "Methods", body)
