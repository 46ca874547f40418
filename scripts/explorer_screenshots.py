"""Screenshots of a report's explorer for the docs, and its load time: open REPORT in headless Chromium
(Debian's, through Playwright), time until the explorer is ready, hover a frame, then move the layer
slider; write OUT/explorer-hover.png and OUT/explorer-layer.png.

    python scripts/explorer_screenshots.py phonorm-demo/report.html docs/figures
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
READY = ("window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].get_model_by_name('phonorm-map') "
         "&& document.querySelector('.bk-Column, .bk-root, [class^=bk]') !== null")
# Screen position of frame i: the map's view turns data into canvas pixels.
POSITION = """(i) => {
  const doc = Bokeh.documents[0], plot = doc.get_model_by_name('phonorm-map');
  const find = (v) => { if (v.model === plot) return v;
    for (const c of (v.children ? v.children() : [])) { const f = find(c); if (f) return f; } return null; };
  let view = null; for (const r of Bokeh.index.roots) { view = find(r); if (view) break; }
  const data = doc.get_model_by_name('phonorm-frames').data;
  const box = view.canvas_view.el.getBoundingClientRect();
  return [box.left + view.frame.x_scale.compute(data.x[i]), box.top + view.frame.y_scale.compute(data.y[i])];
}"""


def main(report: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1000, "height": 1000})
        started = time.perf_counter()
        page.goto(report.resolve().as_uri())
        page.wait_for_function(READY)
        print(f"{report}: {report.stat().st_size / 1e6:.1f} MB, explorer ready in {time.perf_counter() - started:.2f} s")
        page.evaluate("document.getElementById('explorer').scrollIntoView()")
        page.wait_for_timeout(500)
        frame = page.evaluate("Bokeh.documents[0].get_model_by_name('phonorm-frames').data.x.length") // 3
        x, y = page.evaluate(POSITION, frame)
        page.mouse.move(x, y)
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "explorer-hover.png"), clip={"x": 0, "y": 140, "width": 800, "height": 720})
        for _ in range(2):
            page.locator(".noUi-handle").first.press("ArrowRight")
        page.locator("select").nth(1).select_option("sex")
        page.mouse.move(5, 5)
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "explorer-layer.png"), clip={"x": 0, "y": 140, "width": 800, "height": 720})
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
