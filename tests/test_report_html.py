"""report.html in headless Chromium (Debian package `chromium`) at 1280x800, a laptop screen:
the held-out accuracy headline and the four headline plots are above the fold, drawn, and
the full metric table is collapsed.

`.ci/run` installs chromium when it is missing, so under CI (CI set) a missing browser is a
failure; elsewhere the test skips.
"""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread

from mathrl.report.html import write_report
from test_report_plots import make_run

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
WIDTH, FOLD = 1280, 800

# Added to a copy of the report (the report itself has no script): writes the page's layout,
# in CSS pixels from the top of the page, into a <pre> that --dump-dom prints.
LAYOUT_PROBE = """<script>
const box = e => {
  const b = e.getBoundingClientRect();
  return [b.left, b.top, b.right, b.bottom];
};
const details = document.querySelector("details");
const layout = {
  width: innerWidth,
  headline: box(document.querySelector(".headline")),
  plots: [...document.querySelectorAll(".grid4 img")].map(box),
  details: box(details),
  details_open: details.open,
  table_visible: details.querySelector("table").checkVisibility(),
};
const pre = document.createElement("pre");
pre.id = "layout";
pre.textContent = JSON.stringify(layout);
document.body.append(pre);
</script></body>"""


def render(page: Path, shot: Path, profile: Path) -> dict[str, Any]:
    """Screenshot a local page at WIDTH x FOLD (no network); returns LAYOUT_PROBE's output."""
    args = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}", "--dump-dom",
        f"--window-size={WIDTH},{FOLD}", page.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), (
        f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    )
    found = re.search(r'<pre id="layout">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no layout in chromium's DOM dump: {proc.stdout[-2000:]}"
    return json.loads(htmllib.unescape(found.group(1)))


def test_report_headline_above_the_fold_in_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        missing = "needs chromium (apt-get install chromium; .ci/run installs it)"
        if IN_CI:
            pytest.fail(missing)
        pytest.skip(missing)
    report = write_report(make_run(tmp_path))
    text = report.read_text()
    assert "<script" not in text.lower()  # the probe below is only in the copy
    probe = report.with_name("probe.html")
    probe.write_text(text.replace("</body>", LAYOUT_PROBE))
    shot = tmp_path / "report.png"
    layout = render(probe, shot, tmp_path / "profile")

    assert layout["width"] == WIDTH
    assert layout["headline"][3] <= FOLD, layout["headline"]
    assert len(layout["plots"]) == 4  # accuracy, reward, length, entropy/KL
    for left, _top, right, bottom in layout["plots"]:
        assert bottom <= FOLD and right - left > 200, layout["plots"]
    # collapsed: the table is not shown and the <details> is one summary line high
    assert not layout["details_open"] and not layout["table_visible"]
    assert layout["details"][3] - layout["details"][1] < 60, layout["details"]

    pixels = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (FOLD, WIDTH)
    for name, (left, top, right, bottom) in [
        ("headline", layout["headline"]),
        ("first plot", layout["plots"][0]),
    ]:
        region = pixels[int(top) : int(bottom), int(left) : int(right)]
        dark = (region < 0.5).any(axis=-1).mean()
        # Measured here: headline 0.050 dark (text), first plot 0.043 (axes, curves); blank: 0
        assert dark > 0.02, f"{name} looks blank in the screenshot: {dark:.3%} dark pixels"
