"""The report's explorer: the sampled frames of every model and layer on a map you can hover, click to
hear, and slide through; the similarity and probe curves with their intervals, hover-able.

Bokeh (3.x) draws it, with its JavaScript inlined so the page stays one offline file. Chosen by
measurement (docs/report.md): inline Bokeh is about 2 MB of script, holds every state's coordinates as
binary arrays (base64 float32) in one data source that widgets switch between, and shares that
source between the map and the linked table; plotly embeds 4.8 MB and stores each slider step as
plain JSON.

One data source `frames` holds what is drawn (x, y, color) and what hover shows (FRAME_FACTS);
another, `states`, holds every model × layer × map's coordinates as columns "model|layer|map|x"
and "...|y"; the controls copy one state into `frames` (a few lines of CustomJS, below). A click
on one frame plays its syllable through `window.phonormPlayer` (Web Audio: the utterance's clip
decoded once, then `AudioBufferSourceNode.start(0, offset, duration)`, sample-exact), whose clips
are a JSON script element of the page (id `phonorm-clips`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from phonorm.labels import LABELS, SEXES
from phonorm.layers import layer_index
from phonorm.report.explorer_data import COLOUR_BY, FRAME_FACTS, ExplorerData, gather, state_key
from phonorm.report.page import esc, note
from phonorm.settings.report import ReportSettings

#: Names the browser tests (and a user's own scripts) find the models by (Bokeh's `name`).
MAP_NAME, MODEL_SELECT, MAP_SELECT, COLOUR_SELECT, LAYER_SLIDER, TABLE_NAME = (
    "phonorm-map", "phonorm-model", "phonorm-mapkind", "phonorm-colour", "phonorm-layer", "phonorm-table")
#: Rows the selection table lists at most (a box selection may hold thousands of frames).
TABLE_ROWS = 200
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")
_SEX_COLOURS = {"F": "#c0392b", "M": "#2471a3"}


def bokeh_script() -> str:
    """Bokeh's JavaScript (core, widgets, tables, WebGL), inlined: the page needs no network."""
    from bokeh.resources import Resources

    resources = Resources(mode="inline", components=["bokeh", "bokeh-gl", "bokeh-widgets", "bokeh-tables"])
    return "".join(f"<script>{js}</script>" for js in resources.js_raw)


def explorer_html(data: ExplorerData) -> str:
    """The explorer's HTML (Bokeh's div and script, the player and the clips), without Bokeh's library."""
    from bokeh.embed import components

    layout = _layout(data)
    script, div = components(layout)
    clips = json.dumps(data.clip_uris()).replace("</", "<\\/")
    return (f'{div}{script}<script type="application/json" id="phonorm-clips">{clips}</script>'
            f"<script>{PLAYER_JS}</script>")


def curves_html(curves: list[tuple[str, pd.DataFrame]]) -> str:
    """Hover-able line plots with interval bands: (title, table with model, layer, value, ci_low,
    ci_high) each; one line per model."""
    from bokeh.embed import components
    from bokeh.layouts import gridplot

    figures = [_curve(title, table) for title, table in curves if not table.empty]
    if not figures:
        return ""
    script, div = components(gridplot(figures, ncols=2, toolbar_location="right"))
    return div + script


# ---------------------------------------------------------------- the map
def _colours(values: pd.Series, label: str) -> tuple[list[str], str]:
    """A colour per value and the legend's HTML."""
    classes = sorted(set(values), key=lambda v: (len(str(v)), str(v)))
    if LABELS[label].classes == SEXES:
        palette = {c: _SEX_COLOURS.get(str(c), "#777777") for c in classes}
    else:
        palette = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(classes)}
    legend = " ".join(f'<span style="white-space:nowrap"><span style="color:{palette[c]}">&#9679;</span> '
                      f"{esc(c)}</span>" for c in classes[:40])
    if len(classes) > 40:
        legend += f" … ({len(classes)} {label} classes; colours repeat)"
    elif len(classes) > len(_PALETTE) and LABELS[label].classes != SEXES:
        legend += f" (colours repeat: {len(classes)} classes)"
    return [palette[v] for v in values], f"<b>{esc(label)}</b>: {legend}"


def _frame_columns(data: ExplorerData) -> tuple[dict[str, Any], dict[str, str]]:
    frames = data.frames
    columns: dict[str, Any] = {c: frames[c].astype(str).tolist() for c in FRAME_FACTS if c != "time"}
    columns["time"] = frames.time.to_numpy(np.float32)
    columns["syllable_start"] = frames.syllable_start.to_numpy(np.float32)
    columns["syllable_end"] = frames.syllable_end.to_numpy(np.float32)
    columns["has_audio"] = frames.has_audio.tolist()
    legends = {}
    for label in COLOUR_BY:
        columns[f"c_{label}"], legends[label] = _colours(frames[label].astype(str), label)
    first = state_key(data.models[0], data.layers[data.models[0]][0], data.maps[0])
    columns["x"], columns["y"] = data.states[first]
    columns["color"] = columns["c_tone"]
    return columns, legends


def _layout(data: ExplorerData) -> Any:
    from bokeh.layouts import column, row
    from bokeh.models import BoxSelectTool, ColumnDataSource, CustomJS, HoverTool, TapTool
    from bokeh.models.widgets import DataTable, Div, RadioButtonGroup, Select, Slider, TableColumn
    from bokeh.plotting import figure

    columns, legends = _frame_columns(data)
    frames = ColumnDataSource(columns, name="phonorm-frames")
    states = ColumnDataSource({f"{k}|{axis}": xy[i] for k, xy in data.states.items()
                               for i, axis in enumerate(("x", "y"))}, name="phonorm-states")
    plot = figure(name=MAP_NAME, width=680, height=540, output_backend="webgl", tools="pan,wheel_zoom,reset,save",
                  title=f"{data.models[0]} {data.layers[data.models[0]][0]} ({data.maps[0].upper()})")
    plot.scatter("x", "y", source=frames, color="color", size=5, alpha=0.7, nonselection_alpha=0.15,
                 selection_color="black")
    tap = TapTool()
    plot.add_tools(HoverTool(tooltips=_TOOLTIP), tap, BoxSelectTool())
    model_names: list[str | None] = list(data.models)  # the type bokeh's Select declares
    colour_names: list[str | None] = list(COLOUR_BY)
    model = Select(name=MODEL_SELECT, title="model", value=data.models[0], options=model_names, width=160)
    kind = RadioButtonGroup(name=MAP_SELECT, labels=[m.upper() for m in data.maps], active=0)
    colour = Select(name=COLOUR_SELECT, title="colour by", value="tone", options=colour_names, width=120)
    longest = max(len(v) for v in data.layers.values())
    slider = Slider(name=LAYER_SLIDER, title=f"layer {data.layers[data.models[0]][0]}", show_value=False, start=0,
                    end=max(longest - 1, 1), value=0, step=1, width=300,
                    disabled=longest < 2)
    legend = Div(text=legends["tone"], width=680)
    status = Div(text="Hover a point to see its frame; click it to hear its syllable; drag a box (box select) "
                      "to list frames below.", width=680)
    picked = ColumnDataSource({c: [] for c in (*FRAME_FACTS, "syllable_start", "syllable_end")})
    table = DataTable(name=TABLE_NAME, source=picked, width=680, height=220, index_position=None, reorderable=False,
                      columns=[TableColumn(field=c, title=c) for c in (*FRAME_FACTS, "syllable_start", "syllable_end")])
    args = dict(frames=frames, states=states, plot=plot, model=model, kind=kind, colour=colour, slider=slider,
                legend=legend, status=status, picked=picked, layers=data.layers, maps=data.maps, legends=legends,
                table_rows=TABLE_ROWS)
    update = CustomJS(args=args, code=_UPDATE_JS)
    for widget, attribute in ((model, "value"), (kind, "active"), (colour, "value"), (slider, "value")):
        widget.js_on_change(attribute, update)
    frames.selected.js_on_change("indices", CustomJS(args=args, code=_SELECT_JS))
    tap.callback = CustomJS(args=args, code=_TAP_JS)
    controls = row(model, column(Div(text="map"), kind), colour, slider)
    return column(controls, plot, legend, status, table)


_TOOLTIP = """
<div style="font:12px Helvetica,Arial,sans-serif">
<b>@utterance_id</b> &middot; speaker @speaker (@sex)<br>
tone @tone &middot; phone @phone &middot; syllable @syllable<br>
time @time{0.000} s &middot; syllable @syllable_start{0.000}&ndash;@syllable_end{0.000} s
</div>"""

# Runs on every control change: copy the chosen state's coordinates and colours into `frames`.
_UPDATE_JS = """
const names = layers[model.value];
const k = Math.min(slider.value, names.length - 1);
const layer = names[k];
const map = maps[kind.active];
const key = model.value + '|' + layer + '|' + map;
const data = Object.assign({}, frames.data);
let title = model.value + ' ' + layer + ' (' + map.toUpperCase() + ')';
if (key + '|x' in states.data) {
  data.x = states.data[key + '|x'];
  data.y = states.data[key + '|y'];
} else {
  data.x = new Float32Array(data.x.length).fill(NaN);
  data.y = new Float32Array(data.y.length).fill(NaN);
  title += ': no ' + map.toUpperCase() + ' map of this layer (the analysis maps the first, middle and last layer; '
         + 'analyze --umap-all-layers maps every one)';
}
data.color = data['c_' + colour.value];
frames.data = data;
plot.title.text = title;
slider.title = 'layer ' + layer;
legend.text = legends[colour.value];
"""

# Runs when the selection changes (a click or a box): list the selected frames.
_SELECT_JS = """
const idx = frames.selected.indices;
const shown = idx.slice(0, table_rows);
const out = {};
for (const c of Object.keys(picked.data)) { out[c] = shown.map(i => frames.data[c][i]); }
picked.data = out;
if (idx.length > table_rows) {
  status.text = idx.length + ' frames selected; the table lists the first ' + table_rows + '.';
} else if (idx.length > 1) {
  status.text = idx.length + ' frames selected.';
}
"""

# Runs on a click (tap): play the syllable of the frame drawn on top (the highest index) of those hit.
_TAP_JS = """
const idx = frames.selected.indices;
if (idx.length === 0) { return; }
const i = Math.max(...idx), d = frames.data;
const what = d.utterance_id[i] + ' · ' + d.syllable[i] + ' (' + d.syllable_start[i].toFixed(3) + '–'
           + d.syllable_end[i].toFixed(3) + ' s)' + (idx.length > 1 ? '; ' + idx.length + ' frames under the pointer, '
           + 'the one drawn on top' : '');
if (!d.has_audio[i]) {
  status.text = 'No audio for ' + what + ' (left out by the page audio budget, or report --no-audio).';
} else {
  status.text = 'Playing ' + what;
  window.phonormPlayer.play(d.utterance_id[i], d.syllable_start[i], d.syllable_end[i]);
}
"""

# The player: one AudioContext; each clip decoded once; the syllable played sample-exactly. Its state
# reads like an <audio> element's (paused, currentTime in s within the clip) for scripts and tests.
PLAYER_JS = """
window.phonormPlayer = (function () {
  let context = null, clips = null, current = null, startedAt = 0;
  const buffers = {};
  const player = {paused: true, utterance: null, start: null, end: null, error: null, played: 0,
                  get currentTime() { return current ? player.start + (context.currentTime - startedAt) : 0; }};
  function clipUri(utterance) {
    if (clips === null) { clips = JSON.parse(document.getElementById('phonorm-clips').textContent); }
    return clips[utterance];
  }
  async function decode(utterance) {
    if (!(utterance in buffers)) {
      const uri = clipUri(utterance);
      if (!uri) { throw new Error('no audio for ' + utterance); }
      const bytes = await (await fetch(uri)).arrayBuffer();
      buffers[utterance] = await context.decodeAudioData(bytes);
    }
    return buffers[utterance];
  }
  player.play = async function (utterance, start, end) {
    try {
      if (context === null) { context = new AudioContext(); }
      if (context.state === 'suspended') { await context.resume(); }
      const buffer = await decode(utterance);
      if (current) { current.onended = null; try { current.stop(); } catch (e) {} }
      const source = context.createBufferSource();
      source.buffer = buffer;
      source.connect(context.destination);
      source.onended = () => { if (current === source) { current = null; player.paused = true; } };
      const from = Math.max(0, start), length = Math.max(0, Math.min(end, buffer.duration) - from);
      startedAt = context.currentTime;
      source.start(0, from, length);
      current = source;
      Object.assign(player, {paused: false, utterance: utterance, start: from, end: from + length, error: null,
                             played: player.played + 1, duration: buffer.duration});
    } catch (err) {
      player.error = String(err);
      player.paused = true;
    }
  };
  player.stop = function () { if (current) { current.stop(); } };
  return player;
})();
"""


# ---------------------------------------------------------------- curves
def _curve(title: str, table: pd.DataFrame) -> Any:
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool
    from bokeh.plotting import figure

    layers = sorted(set(table.layer), key=layer_index)
    plot = figure(title=title, width=460, height=300, x_range=FactorRange(factors=layers), tools="pan,wheel_zoom,reset,save")
    renderers: list[Any] = []
    for i, (model, part) in enumerate(table.groupby("model", sort=False)):
        part = part.set_index("layer").reindex([x for x in layers if x in set(part.layer)]).reset_index()
        colour = _PALETTE[i % len(_PALETTE)]
        source = ColumnDataSource({"layer": part.layer.tolist(), "value": part.value.to_numpy(float),
                                   "low": part.ci_low.to_numpy(float), "high": part.ci_high.to_numpy(float),
                                   "model": [str(model)] * len(part)})
        plot.varea("layer", y1="low", y2="high", source=source, fill_color=colour, fill_alpha=0.15)
        plot.line("layer", "value", source=source, color=colour, line_width=2, legend_label=str(model))
        renderers.append(plot.scatter("layer", "value", source=source, color=colour, size=6))
    plot.add_tools(HoverTool(renderers=renderers, tooltips=[("model", "@model"), ("layer", "@layer"),
                                                            ("value", "@value{0.000}"),
                                                            ("95% CI", "@low{0.000} – @high{0.000}")]))
    plot.legend.location = "bottom_left"
    plot.legend.click_policy = "hide"
    return plot


# ---------------------------------------------------------------- the section
def section_explorer(results: Path, *, features: Optional[Path], corpus: Optional[Path], models: list[str],
                     settings: ReportSettings, budget_bytes: int) -> tuple[str, list[str]]:
    """The explorer section's HTML and the gaps it had to leave (each a sentence; the page shows them)."""
    gaps: list[str] = []
    gathered = gather(results, features=features, corpus=corpus, models=models, settings=settings,
                      budget_bytes=budget_bytes - len(PLAYER_JS) - LAYOUT_BYTES)
    parts = ["<p>Every frame the analysis sampled, in every model and layer: hover a point to see what it is, "
             "click it to hear its syllable (from the utterance's recording), move the layer slider, switch the "
             "model, the map (UMAP, PCA) and the colours; drag a box (box select tool) to list frames. The same "
             "frames are in every state, so a point can be followed. PCA axes are flipped, layer to layer, to agree "
             "with the layer before (display only).</p>"]
    if isinstance(gathered, str):
        gaps.append(f"explorer: {gathered}")
        parts.append(note(f"No explorer: {gathered}."))
    else:
        counts = gathered.counts
        parts.append(f"<p>{counts['frames']} frames of {counts['utterances']} utterances "
                     f"({counts['clips']} with audio, {gathered.audio_bytes() / 1e6:.1f} MB as Ogg Opus at about "
                     f"{settings.audio_kbps} kbit/s); page budget {settings.max_mb:g} MB, audio "
                     f"{settings.audio_mb:g} MB.</p>")
        parts += [note(text) for text in gathered.notes]
        parts.append(explorer_html(gathered))
    curves = _curve_tables(results, models)
    if curves:
        parts.append("<h3>Curves with their intervals</h3><p>Linear CKA to the reference (C2 decides on it; 95% "
                     "delete-one-speaker jackknife) and probe accuracy (95% cluster-robust t over speakers), per layer. "
                     "Hover a point for its numbers; click a legend entry to hide a model.</p>")
        parts.append(curves_html(curves))
    return "".join(parts), gaps


#: Bytes of the explorer's layout (widgets, tools, table) besides its data, as Bokeh writes it.
LAYOUT_BYTES = 60_000


def _curve_tables(results: Path, models: list[str]) -> list[tuple[str, pd.DataFrame]]:
    from phonorm.records.tables import PROBES, SIMILARITY

    curves = []
    similarity = SIMILARITY.read(results)
    if similarity is not None and {"measure", "ci_low", "ci_high"} <= set(similarity.columns):
        cka = similarity[similarity.measure == "cka"]
        curves.append(("linear CKA to the reference", cka))
    probes = PROBES.read(results)
    if probes is not None and {"label", "ci_low", "ci_high"} <= set(probes.columns):
        probes = probes[probes.model.isin(models)].rename(columns={"accuracy": "value"})
        for label, part in probes.groupby("label", sort=False):
            curves.append((f"probe accuracy: {label}", part))
    return curves
