#!/usr/bin/env python3
"""Render a run's report.html (and a comparison's comparison.html) to PNG with headless Chromium, to look at.

Input: run or comparison directories (or HTML files). Output, beside each page:
``<page>-screen.png`` (the first screen at --width × --height; not ``<page>.png``,
which would overwrite the comparison's own comparison.png) and ``<page>-full.png``
(a tall capture of the whole page, --full-height; crop it to look at a part).

Chromium comes from Debian (``apt-get install -y chromium``); Playwright's
browser download is not needed. Example::

    loadgen 'load.levels=[4,8,16]' load.duration_s=4 hydra.run.dir=/tmp/shot/run
    python scripts/screenshot_report.py /tmp/shot/run --width 1400
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

PAGES = ("report.html", "comparison.html")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> Optional[str]:
    """The first Chromium-like browser on PATH, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def pages(targets: list[str]) -> list[str]:
    """The HTML pages named by ``targets`` (files, or directories holding report.html / comparison.html)."""
    out = []
    for target in targets:
        if os.path.isfile(target):
            out.append(os.path.abspath(target))
            continue
        out += [os.path.abspath(os.path.join(target, p)) for p in PAGES if os.path.exists(os.path.join(target, p))]
    return out


def screenshot(browser: str, url: str, png: str, width: int, height: int) -> None:
    """Capture ``url`` at ``width`` × ``height`` CSS pixels into ``png`` (a fresh profile, no network services)."""
    with tempfile.TemporaryDirectory(prefix="lg-chromium-") as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}", url,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def main(argv: Optional[list[str]] = None) -> int:
    """Screenshot every page found; print each PNG's path. Exit 2 without a browser or a page."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="+", help="run or comparison directories, or HTML files")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--full-height", type=int, default=5200, help="height of the whole-page capture (0: skip it)")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("no Chromium found: apt-get install -y chromium", file=sys.stderr)
        return 2
    found = pages(args.targets)
    if not found:
        print(f"no report.html or comparison.html in {args.targets}", file=sys.stderr)
        return 2
    for page in found:
        stem, url = os.path.splitext(page)[0], "file://" + page
        shots = [(f"{stem}-screen.png", url, args.height)]
        if args.full_height:
            shots.append((f"{stem}-full.png", url, args.full_height))
        for png, where, height in shots:
            screenshot(browser, where, png, args.width, height)
            print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
