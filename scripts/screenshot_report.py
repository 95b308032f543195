"""Screenshot the top of an HTML report in headless Chromium, for the README.

Usage::

    python scripts/screenshot_report.py                    # runs the main job on the organism first (a few minutes)
    python scripts/screenshot_report.py results/run1       # a run folder, or its report.html
    python scripts/screenshot_report.py --tiny             # a test-sized report on a tiny random model (seconds)

Writes ``docs/figures/report.png`` (``--out``), the first ``--height`` pixels of the page
at ``--width`` pixels, and fails when the file is larger than ``--max-kb``. Needs Chromium
(``apt-get install chromium``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--force-device-scale-factor=1",
    "--virtual-time-budget=20000",
]  # fmt: skip
MAIN_JOB = ["analyze", "--model", "organism", "--task", "organism", "--threads", "1", "--quiet"]


def _run_report(tmp: Path, tiny: bool) -> Path:
    import torch

    from icl_heads.cli import main

    torch.set_num_threads(1)
    out = tmp / "report"
    if tiny:
        from icl_heads.testing import tiny_llama_dir

        argv = ["analyze", "--model", str(tiny_llama_dir(tmp / "model")), "--n-prompts", "16", "--shots", "2"]
        argv += ["--quiet", "--out", str(out)]
    else:
        argv = [*MAIN_JOB, "--out", str(out)]
    if main(argv) != 0:
        raise SystemExit(f"icl-heads {' '.join(argv)} failed")
    return out / "report.html"


def screenshot(report: Path, out: Path, width: int, height: int) -> Path:
    """Write a PNG of the first ``height`` pixels of ``report`` at ``width`` pixels; return its path."""
    browser = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
    if browser is None:
        raise SystemExit("Chromium is not installed (apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out.resolve()}",
             f"--window-size={width},{height}", report.resolve().as_uri()],
            capture_output=True, timeout=180, check=True,
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "report", nargs="?", type=Path, help="report.html or its run folder (default: run the main job)"
    )
    parser.add_argument("--tiny", action="store_true", help="screenshot a test-sized report on a tiny random model")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "report.png")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1300)
    parser.add_argument("--max-kb", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = args.report or _run_report(Path(tmp), args.tiny)
        if report.is_dir():
            report = report / "report.html"
        if not report.is_file():
            raise SystemExit(f"no report at {report}: give a report.html or the folder of a run")
        shot = screenshot(report, args.out, args.width, args.height)
    kb = shot.stat().st_size / 1024
    if kb > args.max_kb:
        raise SystemExit(f"{shot} is {kb:.0f} KB, above --max-kb {args.max_kb}: use a smaller --width or --height")
    print(f"{shot}: {args.width}x{args.height} px, {kb:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
