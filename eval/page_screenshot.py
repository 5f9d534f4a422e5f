"""A screenshot of the search page of ``mvr serve`` for docs/, in Debian's headless Chromium.

    python -m mvr.eval.page_screenshot scifact "ALDH1 expression is associated with poorer prognosis in breast cancer" --output docs/search-page.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvr.eval.page_screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="index name or path")
    parser.add_argument("query")
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--index-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from ..server import background
    from ..server.catalog import Catalog

    chromium = os.environ.get("MVR_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no Chromium found: apt-get install chromium, or set MVR_CHROMIUM")
    catalog = Catalog([args.index], args.index_dir)
    with background(catalog) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900}, bypass_csp=True)
        page.goto(url + "/")
        page.wait_for_selector("#index option", state="attached")
        page.fill("#k", str(args.k))
        page.fill("#query", args.query)
        page.click("button[type=submit]")
        page.wait_for_selector("li.hit")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.output), full_page=True)
        browser.close()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
