"""Open the HTML report in headless Chromium: every figure draws, no JavaScript errors, a screenshot is kept."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from icl_heads.cli import main
from icl_heads.testing import tiny_llama_dir

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000",
]  # fmt: skip


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("headless Chromium is required in CI; .ci/run installs Debian's chromium package")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


@pytest.mark.browser
@pytest.mark.slow
def test_report_renders_in_a_browser(tmp_path):
    browser = _chromium()
    out = tmp_path / "report"
    model = tiny_llama_dir(tmp_path / "model")
    assert (
        main(["analyze", "--model", str(model), "--n-prompts", "16", "--shots", "2", "--out", str(out), "--quiet"]) == 0
    )
    import json

    n_figures = json.loads((out / "summary.json").read_text())["n_figures"]
    profile = tmp_path / "profile"
    url = (out / "report.html").as_uri()
    dom = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True, text=True, timeout=180
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    drawn = len(re.findall(r'class="[^"]*js-plotly-plot', dom.stdout))
    assert drawn == n_figures > 0
    assert dom.stdout.count('class="main-svg"') >= n_figures  # plotly drew an SVG for each
    js_errors = [
        line for line in dom.stderr.splitlines() if "Uncaught" in line or ("CONSOLE" in line and "Error" in line)
    ]
    assert not js_errors, js_errors
    artifacts = Path(os.environ.get("ICL_HEADS_ARTIFACTS", out))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report-screenshot.png"
    subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,3000", url],
        capture_output=True, timeout=180, check=True,
    )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 10_000
