"""`phonorm report R --out report.html`: one self-contained page for a phonetician, top to bottom.

Sections: the claims at a glance; corpus; training curves; accuracy per model and task (the
study's table); similarity to the pre-trained model per layer (every measure with its permutation
floor and held-out value); layer × layer heatmaps; probe accuracy per layer with the classic
baselines (the central picture of normalization) and any probe that did not converge; variance
shares and PCA; UMAP maps coloured by tone and by sex; concept erasure (LEACE) per layer; the claim
checks (estimate, CI, margin and verdict of every comparison); methods (every setting and version;
stage timings).

Where things are: R/context.json (written by `phonorm run`) names the corpus, the model folders
and the evaluation files. Without it the report finds them from R/settings.json → the feature
store's manifest.json → each model folder's phonorm.json (its corpus), and uses the models' dev
scores (metrics.json) for the accuracy table. Whatever cannot be found is skipped with a visible
note, never silently.

Self-contained: figures are PNGs embedded as base64 data URIs, the style sheet is inline, the
explorer's library (Bokeh) and audio (Ogg Opus) are inlined too; no script, font or link refers
outside the file, so the page opens offline and can be mailed. `ReportSettings` (settings/report.py)
sets its size budget; `static=True` (report --static) leaves out the explorer and every script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from phonorm.artifacts import atomic_path
from phonorm.errors import InputError
from phonorm.records.analysis import AnalysisRecord, ClaimsFile
from phonorm.report.explorer import bokeh_script, section_explorer
from phonorm.report.page import (
    RESULT_FILES,
    Page,
    Sources,
    esc,
    read_record,
)
from phonorm.report.sections_claims import section_claims, section_glance, section_methods
from phonorm.report.sections_inputs import section_accuracy, section_corpus, section_training
from phonorm.report.sections_results import (
    section_erasure,
    section_matrices,
    section_normalization,
    section_probes,
    section_similarity,
    section_umap,
)
from phonorm.settings.report import ReportSettings


# =========================================================================== entry point
def build_report(results: str | Path, *, out: str | Path, context: Optional[str | Path] = None,
                 settings: Optional[ReportSettings] = None) -> str:
    """Write the report of the results folder `results` to the HTML file `out` (atomically);
    returns a line naming the file, its figures and the sections it had to skip. `context`: the
    `context.json` of a `phonorm run` (records.context.RunContext), else found from the records.
    `settings`: the explorer and the page's size budget (default: ReportSettings())."""
    results, out = Path(results), Path(out)
    report_settings = settings or ReportSettings()
    if not results.is_dir():
        raise InputError(results, "no such results folder (run phonorm analyze first)")
    if not any((results / name).exists() for name in RESULT_FILES):
        raise InputError(results, "holds no analysis results (similarity.csv, probes.csv, claims.json, ...); "
                                  "run phonorm analyze first")
    if not (results / "settings.json").is_file():
        raise InputError(results / "settings.json", "missing: phonorm analyze writes it last, so this analysis did "
                                                    "not finish; run it again with the same options to complete it")
    _refuse_unfinished(results)
    if out.is_dir():
        raise InputError(out, "is a folder; --out names the HTML file to write (e.g. report.html)")
    sources = Sources.discover(results, Path(context) if context is not None else None)
    claims = read_record(ClaimsFile, results / ClaimsFile.FILE)
    # validate's check above read settings.json through its type; an empty record stands for one that
    # went away since, so each section shows its gap
    analysis = read_record(AnalysisRecord, results / AnalysisRecord.FILE) or AnalysisRecord(settings={})
    page = Page(listed={(results / name).resolve() for name in analysis.figures})
    reference = (claims.reference if claims else None) or (sources.context.reference if sources.context else None) \
        or analysis.settings.get("reference") or "the reference"

    section_glance(page, claims)
    section_corpus(page, sources)
    section_training(page, sources)
    section_accuracy(page, sources)
    section_similarity(page, results, reference, analysis.settings)
    section_matrices(page, results)
    section_probes(page, results, reference)
    section_normalization(page, results)
    section_umap(page, results, analysis, sources)
    section_erasure(page, results)
    section_claims(page, claims)
    section_methods(page, results, sources, analysis, claims)

    experiment = sources.context.experiment if sources.context else None
    title = (experiment.title if experiment else None) or (
        f"phonorm report: {experiment.name}" if experiment else f"phonorm report: {results.resolve().name}")
    description = experiment.description if experiment else None
    document = _document(title, description, page, results)
    if not report_settings.static:
        library = bokeh_script()
        budget = int(report_settings.max_mb * 1e6) - len(document.encode()) - len(library)
        models = analysis.models or [m.name for m in sources.models]
        body, gaps = section_explorer(results, features=sources.features, corpus=sources.corpus, models=models,
                                      settings=report_settings, budget_bytes=budget)
        page.insert_after("umap", "explorer", "Explore the frames: hover, listen, slide through the layers", body)
        page.missing += gaps
        document = _document(title, description, page, results, head=library)
    _check_size(document, report_settings, out)
    with atomic_path(out) as tmp:
        tmp.write_text(document, encoding="utf-8")
        tmp.chmod(0o644)  # a page to share: readable like any file a user saves (mkstemp makes 0600)
    skipped = f"; skipped (see notes in the page): {', '.join(page.missing)}" if page.missing else ""
    return f"{out}: report with {page.figures} figures, {len(page.sections)} sections{skipped}"


def _check_size(document: str, settings: ReportSettings, out: Path) -> None:
    size = len(document.encode())
    if size > settings.max_mb * 1e6:
        raise InputError(out, f"the page would be {size / 1e6:.1f} MB, over its budget of {settings.max_mb:g} MB "
                              "(report --max-mb); --points, --audio-mb, --no-audio or --static make it smaller")


def _refuse_unfinished(results: Path) -> None:
    """InputError naming every missing or damaged file of the results folder (validate's check of
    it): a report is built only from a whole analysis, never from an interrupted one's leftovers."""
    from phonorm.validate import check_results

    verdict = check_results(results, columns=False)  # files of earlier versions: the sections show what they lack
    if not verdict.ok:
        raise InputError(results, f"not a complete analysis ({'; '.join(verdict.problems)}); run phonorm analyze "
                                  "again with the same options to complete it")


# =========================================================================== the page
_STYLE = """
body{font-family:Georgia,'Times New Roman',serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:1px solid #ccc;margin-top:2em;padding-bottom:.2em}
h3{font-size:1.05em;margin-top:1.4em} nav ol{columns:2;font-size:.95em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em;font-family:Helvetica,Arial,sans-serif}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top} th{background:#f4f4f4}
table.kv td:last-child{font-family:monospace;word-break:break-all;max-width:700px}
table.study td{font-size:1.05em} table.claims td{max-width:330px}
table.claims ul,ul.glance{margin:0;padding-left:1.1em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.grid{display:flex;flex-wrap:wrap;gap:8px} .grid figure{flex:0 1 32%;margin:0}
.row{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
.caveat{background:#fde8e8;border-left:4px solid #c03030;padding:.4em .7em}
.missing{background:#fff6dd;border-left:4px solid #e0b000;padding:.4em .7em;font-family:Helvetica,Arial,sans-serif;font-size:.9em}
.status{font-family:Helvetica,Arial,sans-serif;font-weight:bold;padding:1px 6px;border-radius:3px;white-space:nowrap}
.status.ok{background:#dff3df;color:#185c18} .status.bad{background:#fbe1e1;color:#8a1c1c} .status.na{background:#eee;color:#555}
.status.unsure{background:#fdf3d0;color:#6b5200}
.reason{font-size:.85em;color:#666;margin:.3em 0 0} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
code{font-size:.9em}
"""


def _document(title: str, description: Optional[str], page: Page, results: Path, head: str = "") -> str:
    nav = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t, _ in page.sections)
    body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in page.sections)
    intro = f"<p>{esc(description)}</p>" if description else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_STYLE}</style>{head}</head><body>"
            f"<h1>{esc(title)}</h1>{intro}<p>How fine-tuning normalizes a self-supervised speech model, layer by "
            f"layer. Results folder <code>{esc(results.resolve())}</code>.</p><nav><ol>{nav}</ol></nav>{body}"
            f"</body></html>\n")
