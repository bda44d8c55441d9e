"""The compare report opens in a real browser: headless Chromium loads index.html, every image decodes, the
score table shows, and a screenshot is saved (REPORT_DIR/screenshot.png) for a person to look at.

Chromium is driven with plain command-line flags: a copy of the page gets a small script that writes its
checks into the DOM on load, and `--dump-dom` prints that DOM back.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from gbmr.analysis.report import build_report
from gbmr.analysis.runs import load_runs
from gbmr.analysis.synthetic import write_run, write_suite

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at "
                                "/usr/bin/chromium (apt-get install -y chromium)")

CHECK = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const table = document.getElementById('scores');
  const box = table ? table.getBoundingClientRect() : {width: 0, height: 0};
  const out = document.createElement('pre');
  out.id = 'gbmr-check';
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    table_rows: table ? table.tBodies[0].rows.length : 0,
    table_text: table ? table.innerText : '',
    table_visible: box.width > 0 && box.height > 0,
    configs: document.querySelectorAll('details pre').length,
  });
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=True,
        )


def check_page(page: Path) -> dict:
    """Load a copy of `page` with the check script in it and return what the script found."""
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="gbmr-check">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run; DOM starts: " + dom[:300]
    return json.loads(found.group(1).replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&"))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    write_suite(root / "runs", ["dqn", "gbmr"], ["CartPole-v1", "ALE/Pong-v5"], seeds=3, points=60,
                total_steps=5000, rng=np.random.default_rng(0))
    write_run(root / "runs" / "live", "gbmr", "CartPole-v1", 9, [1000, 2000], [50.0, 60.0], [1000, 2000],
              [55.0, 65.0], status="running", total_steps=5000)
    return build_report(load_runs([str(root / "runs")]), root / "report", budget=4000, reps=300).index


def test_report_renders_in_chromium(report):
    result = check_page(report)
    assert result["images"] >= 5 and result["broken"] == []
    assert result["table_visible"] and result["table_rows"] == 2
    assert "CartPole-v1" in result["table_text"] and "†" in result["table_text"]
    assert result["configs"] == 13
    shot = report.with_name("screenshot.png")
    chromium("--window-size=1280,2200", f"--screenshot={shot}", report.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_check_catches_a_broken_image(report):
    broken = report.with_name("broken.html")
    broken.write_text(report.read_text().replace("<body>", '<body><img src="missing.png" alt="missing">'))
    assert check_page(broken)["broken"] == ["missing"]
