"""The sweep page: one self-contained HTML file (figures embedded as base64 PNG, no external
resources) drawn from a sweep summary folder (`experiment/summary.py`: sweep.csv, points.json).

- One figure per quantity against the swept setting: the checkpoint step when the sweep has
  checkpoints, else the first swept setting other than the seed that takes several values. Other
  swept settings make separate lines; seeds are repeats: one thin line per seed with its CI band,
  and their mean as a thick line.
- The claim verdicts per point, with a link to each point's own report (relative to the page).
- Every number with its CI and where the CI came from.
"""

from __future__ import annotations

import base64
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import numpy as np
import pandas as pd

from phonorm.artifacts import atomic_path
from phonorm.errors import InputError
from phonorm.records.sweep import POINTS, TABLE, load_points
from phonorm.report.page import esc, note

CLAIMS = ("C1", "C2", "C3", "C4")
_STATUS = {"holds": "ok", "does not hold": "bad"}
_STYLE = """
body{font-family:Georgia,'Times New Roman',serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ccc;margin-top:2em;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em;font-family:Helvetica,Arial,sans-serif}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top} th{background:#f4f4f4}
.grid{display:flex;flex-wrap:wrap;gap:10px} .grid figure{flex:0 1 48%;margin:0}
figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.missing{background:#fff6dd;border-left:4px solid #e0b000;padding:.4em .7em;font-family:Helvetica,Arial,sans-serif;font-size:.9em}
.status{font-family:Helvetica,Arial,sans-serif;font-weight:bold;padding:1px 6px;border-radius:3px;white-space:nowrap}
.status.ok{background:#dff3df;color:#185c18} .status.bad{background:#fbe1e1;color:#8a1c1c} .status.na{background:#eee;color:#555}
td.num{font-family:monospace;white-space:nowrap}
"""


def image(png: Optional[bytes], alt: str, caption: str = "") -> str:
    """An embedded PNG figure (`caption` is HTML), or a note that it is missing."""
    if not png:
        return note(f"no value to draw: {alt}")
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
            + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def axes_of(settings: list[str], table: pd.DataFrame) -> tuple[Optional[str], list[str]]:
    """(the x-axis setting, the settings that make separate lines); the seed is a repeat."""
    varying = [s for s in settings if s in table and table[s].nunique(dropna=False) > 1]
    x: Optional[str] = "checkpoint" if "checkpoint" in varying else \
        next((s for s in varying if s != "seed"), "seed" if "seed" in varying else None)
    return x, [s for s in varying if s not in (x, "seed")]


def _order(values: pd.Series) -> dict[Any, float]:
    """Positions on the x axis: numbers as they are; text (e.g. sizes) in the order first seen."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return {v: float(n) for v, n in zip(values, numeric)}
    return {v: float(i) for i, v in enumerate(dict.fromkeys(values))}


def quantity_figure(rows: pd.DataFrame, quantity: str, title: str, x: Optional[str], series: list[str]) -> Optional[bytes]:
    """One quantity against `x`: a line (with its CI band) per combination of `series` settings and
    seed; with several seeds, their mean as a thick line. None when no value is finite."""
    rows = rows[rows["quantity"] == quantity]
    if not np.isfinite(rows["value"].to_numpy(dtype=float)).any():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.1))
    rows = rows.copy()
    if x is None:
        rows["_x"], positions = 0.0, {0.0: 0.0}
    else:
        positions = _order(rows[x])
        rows["_x"] = rows[x].map(positions)
    groups = rows.groupby(series, dropna=False, sort=False) if series else [((), rows)]
    has_seeds = "seed" in rows and rows["seed"].nunique() > 1
    for i, (key, group) in enumerate(groups):
        colour = f"C{i % 10}"
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{s} {v}" for s, v in zip(series, key)) or None
        repeats = group.groupby("seed", sort=True) if has_seeds else [(None, group)]
        for j, (seed, rep) in enumerate(repeats):
            rep = rep.sort_values("_x")
            xs = rep["_x"].to_numpy(dtype=float)
            ys = rep["value"].to_numpy(dtype=float)
            lo, hi = rep["ci_low"].to_numpy(dtype=float), rep["ci_high"].to_numpy(dtype=float)
            band = np.isfinite(lo) & np.isfinite(hi)
            if band.any():
                ax.fill_between(xs[band], lo[band], hi[band], color=colour, alpha=0.15, linewidth=0)
            ax.plot(xs, ys, marker="os^Dv"[j % 5], color=colour, alpha=0.55 if has_seeds else 1.0,
                    linewidth=0.9 if has_seeds else 1.6, markersize=4,
                    label=(f"{label + ', ' if label else ''}seed {seed}" if has_seeds else label))
        if has_seeds:
            mean = group.groupby("_x")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=colour, linewidth=2.6,
                    label=f"{label + ': ' if label else ''}mean over seeds")
    if x is not None:
        labels = {p: v for v, p in positions.items()}
        ticks = sorted(labels)
        numeric = pd.to_numeric(rows[x], errors="coerce").notna().all()
        if numeric and ticks[0] > 0 and ticks[-1] / ticks[0] >= 8:  # log-spaced steps or hours
            ax.set_xscale("log")
            ax.minorticks_off()
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [str(labels[t]) for t in ticks], fontsize=8)
        ax.set_xlabel("pre-training steps (checkpoint)" if x == "checkpoint" else x, fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    if quantity.endswith(("minus_reference", "lower_to_upper", "error_reduction")):
        ax.axhline(0.0, color="#999", linewidth=0.7, linestyle=":")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig)


def _cell(value: float, low: float, high: float) -> str:
    if not math.isfinite(value):
        return "–"
    ci = f" [{low:.3f}, {high:.3f}]" if math.isfinite(low) and math.isfinite(high) else ""
    return f"{value:.3f}{ci}"


def _link(target: str, page: Path) -> str:
    path = Path(target)
    if not path.is_file():
        return '<span class="status na">not built</span>'
    relative = os.path.relpath(path, page.parent).replace(os.sep, "/")
    return f'<a href="{esc(quote(relative))}">report</a>'


def build_sweep_page(summary: str | Path, *, out: str | Path, title: Optional[str] = None, name: str = "sweep",
                     description: Optional[str] = None) -> str:
    """Write the sweep page of the summary folder `summary` to `out` (atomically); return a line
    saying what it holds."""
    summary, out = Path(summary), Path(out)
    if not (summary / TABLE).is_file() or not (summary / POINTS).is_file():
        raise InputError(summary, f"no sweep summary ({TABLE} and {POINTS}; phonorm run writes them)")
    table, meta = load_points(summary)
    settings = [s for s in meta.settings if s in table]
    points = meta.points
    quantities: dict[str, str] = meta.quantities
    x, series = axes_of(settings, table)
    numbers = table[~table["quantity"].isin(CLAIMS)]

    figures, drawn = [], 0
    for quantity, text in quantities.items():
        if quantity not in set(numbers["quantity"]):
            continue
        png = quantity_figure(numbers, quantity, text, x, series)
        drawn += png is not None
        figures.append(image(png, text, f"<code>{esc(quantity)}</code>; bands: 95% CI where the table has one"))
    what = (f"x: {'the checkpoint step of the pre-training run' if x == 'checkpoint' else x or 'one point'}"
            + (f"; lines: {', '.join(series)}" if series else "")
            + ("; seeds are repeats (thin lines), their mean thick" if "seed" in settings and
               table["seed"].nunique() > 1 else ""))

    verdicts = []
    head = "".join(f"<th>{esc(s)}</th>" for s in settings) + "".join(f"<th>{c}</th>" for c in CLAIMS)
    for p in points:
        claims = table[(table["point"] == p.id) & table["quantity"].isin(CLAIMS)].set_index("quantity")["verdict"]
        cells = "".join(f"<td>{esc(p.values.get(s, ''))}</td>" for s in settings)
        for c in CLAIMS:
            status = str(claims.get(c, "missing")) if c in claims.index else "missing"
            cells += f'<td><span class="status {_STATUS.get(status, "na")}">{esc(status)}</span></td>'
        verdicts.append(f"<tr><td>{esc(p.id)}</td>{cells}<td>{_link(p.report, out)}</td></tr>")
    verdict_table = (f"<table><thead><tr><th>point</th>{head}<th>its report</th></tr></thead>"
                     f"<tbody>{''.join(verdicts)}</tbody></table>")

    shown = [q for q in quantities if q in set(numbers["quantity"])]
    head = "".join(f"<th>{esc(p.id)}</th>" for p in points)
    body = []
    for q in shown:  # a row per quantity, a column per point (points are fewer than quantities' width)
        mine = numbers[numbers["quantity"] == q].drop_duplicates("point").set_index("point")
        cells = "".join(
            f'<td class="num">{esc(_cell(*(float(mine.loc[p.id, c]) for c in ("value", "ci_low", "ci_high"))))}'
            "</td>" if p.id in mine.index else "<td>–</td>" for p in points)
        body.append(f"<tr><td><code>{esc(q)}</code></td>{cells}</tr>")
    number_table = (f'<div style="overflow-x:auto"><table><thead><tr><th>quantity</th>{head}</tr></thead>'
                    f"<tbody>{''.join(body)}</tbody></table></div>")
    sources = numbers.groupby("quantity", sort=False)["ci_from"].agg(lambda s: "; ".join(sorted(set(map(str, s)))))
    source_rows = "".join(f"<tr><td><code>{esc(q)}</code></td><td>{esc(quantities.get(q, ''))}</td>"
                          f"<td>{esc(sources.get(q, ''))}</td></tr>" for q in shown)
    notes = "".join(note(f"{p.id}: {n}") for p in points for n in p.notes)

    heading = title or f"phonorm sweep: {name}"
    sections = [
        ("quantities", "Normalization against the swept setting",
         f"<p>{esc(what)}. {len(points)} points.</p><div class=\"grid\">{''.join(figures)}</div>"),
        ("claims", "Claim verdicts per point", verdict_table),
        ("numbers", "Every number (value [95% CI])", number_table),
        ("sources", "What each quantity is and where its CI comes from",
         f"<table><thead><tr><th>quantity</th><th>meaning</th><th>CI</th></tr></thead><tbody>{source_rows}</tbody>"
         f"</table><p>Probe CIs are those of each point's probes.csv; speaker shares: "
         f"{esc(meta.resamples)} speaker resamples, bias-corrected percentile intervals (see "
         "<code>phonorm.experiment.summary</code>).</p>" + notes),
    ]
    nav = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t, _ in sections)
    html_text = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                 f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(heading)}</title>'
                 f"<style>{_STYLE}</style></head><body><h1>{esc(heading)}</h1>"
                 + (f"<p>{esc(description)}</p>" if description else "")
                 + f"<p>Table: <code>{esc((summary / TABLE).resolve())}</code>. Written "
                 f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p><nav><ol>{nav}</ol></nav>"
                 + "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in sections)
                 + "</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(html_text, encoding="utf-8")
    return f"{out}: {drawn} figures, {len(points)} points"
