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


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    """One run of the command on a tiny random model, shared by the tests of this module."""
    _chromium()
    tmp = tmp_path_factory.mktemp("browser")
    out = tmp / "report"
    model = tiny_llama_dir(tmp / "model")
    argv = ["analyze", "--model", str(model), "--n-prompts", "16", "--shots", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return out


@pytest.mark.browser
@pytest.mark.slow
def test_report_renders_in_a_browser(tmp_path, report_dir):
    import json

    browser = _chromium()
    out = report_dir

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


def _dom(browser: str, profile: Path, url: str, width: int) -> str:
    dom = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},2000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


@pytest.mark.browser
@pytest.mark.slow
def test_report_layout_verdicts_and_provenance(tmp_path, report_dir):
    """The verdicts come first, provenance is there, and at a wide and a narrow window no title overflows, is clipped
    or lies under the modebar, and no table cell breaks a number or word across lines."""
    import html
    import json

    browser = _chromium()
    out = report_dir
    summary = json.loads((out / "summary.json").read_text())
    url = (out / "report.html").as_uri()
    for width in (1400, 800):
        page = _dom(browser, tmp_path / f"profile{width}", url, width)
        body = re.search(r"<body([^>]*)>", page).group(1)
        assert f'data-layout-checked="{width}"' in body, body  # the layout check ran at this width
        overflowing = json.loads(html.unescape(re.search(r'data-overflowing-titles="([^"]*)"', body).group(1)))
        assert overflowing == [], f"titles wider than their figure at {width} px: {overflowing}"
        for check, what in (
            ("clipped-titles", "titles cut at the top or bottom of their figure"),
            ("modebar-over-titles", "titles under plotly's modebar"),
            ("split-words", "numbers or words broken across lines in a table"),
        ):
            found = json.loads(html.unescape(re.search(rf'data-{check}="([^"]*)"', body).group(1)))
            assert found == [], f"{what} at {width} px: {found}"
        assert 'data-page-overflow="false"' in body, f"the page is wider than a {width} px window"
        verdicts = page.index('id="verdicts"')
        assert verdicts < page.index("<h2>Task and data</h2>")  # at the top, before every section
        states = re.findall(r'data-state="([^"]+)"', page)
        assert states == [v["state"] for v in summary["verdicts"]] and len(states) >= 8
        assert "the linear identities hold" in page[verdicts : verdicts + 2000]
        prov = page[page.index('id="provenance"') :]
        for key in ("versions: torch", "versions: transformer-lens", "versions: transformers", "command", "seeds"):
            assert key in prov, key
        assert html.escape(summary["provenance"]["command"], quote=False) in prov
