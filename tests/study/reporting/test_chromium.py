"""report.html rendered by headless Chromium: a non-trivial screenshot and no broken image.

Images are checked in the browser itself: a copy of the page gets a small script that, on load,
writes how many <img> there are and how many decoded (complete, naturalWidth > 0) into <body>
attributes, read back with --dump-dom. A deliberately broken page checks that the probe can fail.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib import image as mpimg

from tests.study.reporting.report_fixture import distinct_colours, full_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`): cannot render report.html")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-img-total', imgs.length);
  document.body.setAttribute('data-img-ok', ok);
});
</script></body>"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def _image_counts(tmp: Path, html: str) -> tuple[int, int]:
    page = tmp / "probe.html"
    page.write_text(html.replace("</body>", PROBE))
    dom = _chromium(tmp, "--dump-dom", page.as_uri()).stdout
    match = re.search(r'<body[^>]*data-img-total="(\d+)"[^>]*data-img-ok="(\d+)"', dom)
    assert match, "the probe script did not run"
    return int(match.group(1)), int(match.group(2))


def test_screenshot_shows_tables_and_images(tmp_path):
    report = full_report().out_dir / "report.html"
    shot = tmp_path / "report.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,4000", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000, run.stderr[-2000:]
    pixels = mpimg.imread(io.BytesIO(shot.read_bytes()), format="png")[..., :3]
    assert pixels.shape[:2] == (4000, 1400)
    not_white = (pixels < 0.95).any(axis=-1)
    assert not_white.mean() > 0.05  # text, tables and figures, not a blank page
    assert distinct_colours(shot.read_bytes()) > 200  # figures bring colour


def test_no_broken_image_in_the_browser(tmp_path):
    result = full_report()
    total, ok = _image_counts(tmp_path, (result.out_dir / "report.html").read_text())
    assert total == len(result.document.figures) > 0
    assert ok == total


def test_probe_detects_a_broken_image(tmp_path):
    page = "<html><body><img src='data:image/png;base64,AAAA'><img src='missing.png'></body></html>"
    assert _image_counts(tmp_path, page) == (2, 0)
