"""The report's explorer: a tiny real run (prepared corpus with audio → extract → analyze → report),
its data within the page's budget, and the page driven in a real browser (Playwright with Debian's
Chromium): hover shows the frame, a click plays its syllable, the layer slider moves the points,
the colour switch recolours them, and the page logs no JavaScript error."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phonorm.errors import InputError
from phonorm.report.explorer_data import gather, state_key
from phonorm.report.html import build_report
from phonorm.settings.report import ReportSettings

CHROMIUM = "/usr/bin/chromium"
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model):
    """A prepared corpus (8 speakers × 3 utterances, all test), two tiny random wav2vec 2.0 models,
    their store (every layer) and its analysis (UMAP on, probes of tone and sex)."""

    from fakes import make_prepared_corpus
    from phonorm.analyze import analyze
    from phonorm.features.extract import extract
    from phonorm.settings import ExtractSettings
    from phonorm.settings.analyze import AnalyzeSettings

    root = tmp_path_factory.mktemp("explorer")
    corpus = make_prepared_corpus(root / "corpus", n_speakers=8, n_utterances=3, seed=1,
                                  splits={f"S{i:02d}": "test" for i in range(8)})
    models = {"pre": tiny_model(0), "other": tiny_model(1)}
    extract(corpus, models=models, out=root / "store", settings=ExtractSettings(classic=False))
    analyze(root / "store", out=root / "R", settings=AnalyzeSettings(
        reference="pre", folds=2, labels=["tone", "sex"], erasure=False, figures=False, progress=False,
        umap_fit_rows=100, held_out=False))
    return {"root": root, "corpus": corpus, "store": root / "store", "results": root / "R"}


@pytest.fixture(scope="module")
def page_file(tiny_run):
    out = tiny_run["root"] / "report.html"
    build_report(tiny_run["results"], out=out)
    return out


def _gather(tiny_run, **settings):
    return gather(tiny_run["results"], features=tiny_run["store"], corpus=tiny_run["corpus"], models=["pre", "other"],
                  settings=ReportSettings(**settings), budget_bytes=int(20e6))


# ---------------------------------------------------------------- the data
def test_every_state_holds_the_same_frames_with_their_syllables(tiny_run):
    data = _gather(tiny_run)
    assert not isinstance(data, str)
    n = len(data.frames)
    assert n > 100 and all(len(x) == len(y) == n for x, y in data.states.values())
    assert data.models == ["pre", "other"] and len(data.layers["pre"]) >= 3
    # PCA of every layer; UMAP of the first, middle and last only (the analysis's default): PCA shown first
    assert data.maps == ["pca", "umap"]
    assert state_key("pre", "L1", "umap") not in data.states and state_key("pre", "L1", "pca") in data.states
    # the coordinates are the analysis's own (up to the displayed sign of each axis)
    table = pd.read_parquet(tiny_run["results"] / "projections" / "other__L2.parquet")
    x, _ = data.states[state_key("other", "L2", "pca")]
    assert np.allclose(np.abs(x), np.abs(table.pc1.to_numpy(np.float32)))
    # every frame lies within its syllable, which lies within its utterance
    durations = pd.read_parquet(tiny_run["corpus"] / "utterances.parquet").set_index("utterance_id").duration
    f = data.frames
    assert ((f.syllable_start <= f.time + 0.011) & (f.time - 0.011 <= f.syllable_end)).all()
    assert (f.syllable_end.to_numpy() <= durations[f.utterance_id].to_numpy() + 1e-6).all()
    assert len(data.clips) == f.utterance_id.nunique() and f.has_audio.all()


def test_the_budget_samples_utterances_and_frames_and_says_so(tiny_run):
    full = _gather(tiny_run)
    one_clip = max(len(c) for c in full.clips.values()) * 4 / 3
    small = _gather(tiny_run, audio_mb=3.5 * one_clip / 1e6, points=50)
    assert 1 <= len(small.clips) <= 4 and len(small.frames) == 50
    assert set(small.frames.utterance_id) <= set(small.clips)
    # balanced over speakers: the clips kept are of different speakers
    assert len({u.split("_")[0] for u in small.clips}) == len(small.clips)
    notes = " ".join(small.notes)
    assert "utterances left out" in notes and "50 of" in notes
    tight = gather(tiny_run["results"], features=tiny_run["store"], corpus=tiny_run["corpus"], models=["pre", "other"],
                   settings=ReportSettings(), budget_bytes=int(full.audio_bytes() * 4 / 3) + 40_000)
    assert 0 < len(tight.frames) < len(full.frames) and "budget" in " ".join(tight.notes)
    silent = _gather(tiny_run, audio=False)
    assert not silent.clips and not silent.frames.has_audio.any() and len(silent.frames) == len(full.frames)


def test_projections_on_other_frames_are_refused(tiny_run, tmp_path):
    results = tmp_path / "R"
    shutil.copytree(tiny_run["results"], results)
    path = results / "projections" / "other__L1.parquet"
    table = pd.read_parquet(path)
    table.iloc[::-1].to_parquet(path, index=False)
    with pytest.raises(InputError, match="other__L1.parquet.*other frames"):
        gather(results, features=tiny_run["store"], corpus=tiny_run["corpus"], models=["pre", "other"],
               settings=ReportSettings(), budget_bytes=int(20e6))


def test_static_and_silent_pages_and_the_size_limit(tiny_run, page_file, tmp_path):
    page = page_file.read_text()
    assert 'id="explorer"' in page and "phonorm-clips" in page and "data:audio/ogg;base64," in page
    assert not re.search(r"<(script|link|img|audio)[^>]+(src|href)=\"?https?:", page)  # nothing from outside the file
    # (Bokeh's inlined library names CDNs for features the page does not use; the browser test below
    # records every request the page makes)
    static = tmp_path / "static.html"
    build_report(tiny_run["results"], out=static, settings=ReportSettings(static=True))
    assert "<script" not in static.read_text() and 'id="explorer"' not in static.read_text()
    silent = tmp_path / "silent.html"
    build_report(tiny_run["results"], out=silent, settings=ReportSettings(audio=False))
    assert "data:audio" not in silent.read_text() and "no audio (report --no-audio)" in silent.read_text()
    with pytest.raises(InputError, match="over its budget of 2 MB"):
        build_report(tiny_run["results"], out=tmp_path / "big.html", settings=ReportSettings(max_mb=2, audio_mb=1))
    assert not (tmp_path / "big.html").exists()


# ---------------------------------------------------------------- in a browser
# Screen positions of the frames on the map: the plot's view maps data to canvas pixels.
_POSITIONS = """() => {
  const doc = Bokeh.documents[0], plot = doc.get_model_by_name('phonorm-map');
  const find = (v) => { if (v.model === plot) return v;
    for (const c of (v.children ? v.children() : [])) { const f = find(c); if (f) return f; } return null; };
  let view = null; for (const r of Bokeh.index.roots) { view = find(r); if (view) break; }
  const data = doc.get_model_by_name('phonorm-frames').data;
  const box = view.canvas_view.el.getBoundingClientRect();
  return Array.from(data.x, (x, i) => [box.left + view.frame.x_scale.compute(x),
                                       box.top + view.frame.y_scale.compute(data.y[i])]);
}"""
_TOOLTIP = """() => { const out = [];
  const walk = (root) => { root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) walk(e.shadowRoot); });
    root.querySelectorAll('[class*=tooltip], [class*=Tooltip]').forEach(e => out.push(e.innerText || e.textContent)); };
  walk(document); return out.join(' '); }"""
_FRAMES = "(c) => Array.from(Bokeh.documents[0].get_model_by_name('phonorm-frames').data[c])"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it: scripts/ensure-chromium.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        yield launched
        launched.close()


def _isolated_frame(page) -> int:
    """A frame with no other frame within 8 pixels on screen (so that hover and click hit it alone)."""
    points = np.array(page.evaluate(_POSITIONS))
    distance = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)) + np.eye(len(points)) * 1e9
    alone = np.flatnonzero(distance.min(1) > 8)
    assert len(alone), "every frame overlaps another on the map"
    return int(alone[0])


def test_hover_click_slide_and_colour_in_a_real_browser(browser, page_file, tiny_run):
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    started = time.perf_counter()
    page.goto(page_file.as_uri())
    page.wait_for_function("window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].get_model_by_name('phonorm-map')")
    page.evaluate("document.getElementById('explorer').scrollIntoView()")
    page.wait_for_timeout(300)
    ready = time.perf_counter() - started
    i = _isolated_frame(page)
    utterance = page.evaluate(_FRAMES, "utterance_id")[i]
    x, y = page.evaluate(_POSITIONS)[i]

    page.mouse.move(x, y)
    page.wait_for_function(f"({_TOOLTIP})().includes('{utterance}')", timeout=5000)
    assert page.evaluate(_FRAMES, "syllable")[i] in page.evaluate(_TOOLTIP)

    page.mouse.click(x, y)
    page.wait_for_function("window.phonormPlayer.played >= 1 && !window.phonormPlayer.paused "
                           "&& window.phonormPlayer.currentTime > 0", timeout=5000, polling="raf")
    player = page.evaluate("({...window.phonormPlayer, currentTime: window.phonormPlayer.currentTime})")
    assert player["utterance"] == utterance and player["error"] is None
    start, end = page.evaluate(_FRAMES, "syllable_start")[i], page.evaluate(_FRAMES, "syllable_end")[i]
    assert player["start"] == pytest.approx(start, abs=1e-4) and player["end"] == pytest.approx(end, abs=1e-4)
    assert start <= player["currentTime"] <= end + 0.05
    # the clip decodes to the utterance's length (Opus's pre-skip honoured), and playing stops at the syllable's end
    duration = pd.read_parquet(tiny_run["corpus"] / "utterances.parquet").set_index("utterance_id").duration[utterance]
    assert player["duration"] == pytest.approx(duration, abs=0.01)
    page.wait_for_function("window.phonormPlayer.paused", timeout=int((end - start) * 1000) + 3000)

    before = (page.evaluate(_FRAMES, "x")[i], page.evaluate(_FRAMES, "y")[i])
    page.locator(".noUi-handle").first.press("ArrowRight")
    page.wait_for_function("Bokeh.documents[0].get_model_by_name('phonorm-layer').value === 1")
    after = (page.evaluate(_FRAMES, "x")[i], page.evaluate(_FRAMES, "y")[i])
    assert before != after and np.isfinite(after).all()
    assert "L1" in page.evaluate("Bokeh.documents[0].get_model_by_name('phonorm-map').title.text")

    page.locator("select").nth(1).select_option("sex")
    page.wait_for_timeout(200)
    colours, sexes = page.evaluate(_FRAMES, "color"), page.evaluate(_FRAMES, "sex")
    assert {c for c, s in zip(colours, sexes) if s == "F"} == {"#c0392b"}
    assert {c for c, s in zip(colours, sexes) if s == "M"} == {"#2471a3"}

    # box selection lists exactly the frames inside the box in the linked table
    points = np.array(page.evaluate(_POSITIONS))
    page.locator(".bk-tool-icon-box-select").first.click()
    centre = np.nanmedian(points, axis=0)
    low, high = centre - 40, centre + 40
    inside = int((np.isfinite(points).all(1) & (points >= low).all(1) & (points <= high).all(1)).sum())
    page.mouse.move(*low)
    page.mouse.down()
    page.mouse.move(*centre, steps=5)
    page.mouse.move(*high, steps=5)
    page.mouse.up()
    page.wait_for_timeout(300)
    listed = page.evaluate("Bokeh.documents[0].get_model_by_name('phonorm-table').source.data.utterance_id.length")
    assert 0 < inside <= 200 and listed == inside, (inside, listed)

    # another model: its own coordinates of the same frame, named in the title
    page.locator("select").nth(0).select_option("other")
    page.wait_for_function("Bokeh.documents[0].get_model_by_name('phonorm-map').title.text.startsWith('other L1')")
    assert (page.evaluate(_FRAMES, "x")[i], page.evaluate(_FRAMES, "y")[i]) != after
    assert not errors, errors
    assert all(url.startswith(("file:", "data:")) for url in requests), [u[:80] for u in requests]
    print(f"explorer ready in {ready:.2f} s ({page_file.stat().st_size / 1e6:.1f} MB)")
    page.close()
