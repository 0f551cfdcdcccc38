"""Regenerate docs/dashboard.png and docs/dashboard-history.png, the README's pictures of the
dashboard, from the real thing.

Starts `csatdist serve --demo` on a free port with a new database in a temporary directory,
opens /dashboard in Debian's Chromium (headless, through Playwright; no browser is downloaded),
signs in with account `demo` and the read key the demo printed, waits until every panel shows
data, and saves the first screen at a fixed size: the Live view, then the History view (the last
30 days by day, the previous period dashed, one period's tooltip). Run by `make screenshot`.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from playwright.sync_api import ViewportSize, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CSATDIST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
#: A laptop's screen: the headline, the bars, the chart and the first rows of the skills table
#: (names, each score with its 95% range).
VIEWPORT: ViewportSize = {"width": 1280, "height": 1100}
#: History: the headline, the trend chart and the skills table with its changes.
HISTORY_VIEWPORT: ViewportSize = {"width": 1280, "height": 1440}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_demo(directory: Path) -> tuple[subprocess.Popen[bytes], str, dict[str, object]]:
    """`csatdist serve --demo` in ``directory``; its URL and what it printed (--json)."""
    port = free_port()
    printed = directory / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSATDIST_")}
    command = [sys.executable, "-m", "csatdist", "serve", "--demo", "--json"]
    with printed.open("wb") as out, (directory / "demo.err").open("wb") as err:
        process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
            [*command, "--database", "demo.db", "--port", str(port)],
            cwd=directory,
            stdout=out,
            stderr=err,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the demo exited:\n{(directory / 'demo.err').read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the demo did not start within 60 s")
        time.sleep(0.1)
    info: dict[str, object] = orjson.loads(printed.read_text().splitlines()[0])
    return process, url, info


def capture(url: str, account: str, read_key: str, output: Path, history_output: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.goto(url + "/dashboard")
            page.get_by_label("Account id").fill(account)
            page.get_by_label("API key (read scope)").fill(read_key)
            page.get_by_role("button", name="Sign in").click()
            # Rendered: pushed data in the headline, the chart, both tables and the pick lists.
            expect(page.locator("#live")).to_have_text("live (push)", timeout=20_000)
            expect(page.locator("#total")).not_to_have_text("\u2013")  # the placeholder dash
            expect(page.locator("#series rect").first).to_be_visible()
            expect(page.locator("#skills-table tbody tr").first).to_be_visible()
            expect(page.locator("#agents-table tbody tr").first).to_be_visible()
            expect(page.locator("#agents option").nth(1)).to_be_attached()
            page.mouse.move(0, 0)  # no hover state in the picture
            page.wait_for_timeout(500)  # let the bars' transitions settle
            page.screenshot(path=str(output))

            page.set_viewport_size(HISTORY_VIEWPORT)
            page.get_by_role("tab", name="History").click()
            page.locator("#h-range").select_option("30d")
            expect(page.locator("#h-periods tbody tr")).to_have_count(30, timeout=20_000)
            expect(page.locator("#h-chart polyline.previous").first).to_be_attached()
            expect(page.locator("#h-skills-table td.change").first).not_to_have_text("\u2013")
            chart = page.locator("#h-chart").bounding_box()
            if chart is None:
                raise SystemExit("the History chart is not on the screen")
            # A tooltip on a period about two thirds along: what hovering shows.
            page.mouse.move(chart["x"] + chart["width"] * 0.66, chart["y"] + chart["height"] / 2)
            expect(page.locator("#h-tip")).to_be_visible()
            page.screenshot(path=str(history_output))
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument(
        "--history-output", type=Path, default=ROOT / "docs" / "dashboard-history.png"
    )
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="csatdist-screenshot-") as directory:
        process, url, info = start_demo(Path(directory))
        try:
            capture(
                url,
                str(info["account"]),
                str(info["read_token"]),
                args.output,
                args.history_output,
            )
        finally:
            process.terminate()
            process.wait(timeout=15)
    print(f"wrote {args.output} ({VIEWPORT['width']}x{VIEWPORT['height']})")
    size = f"{HISTORY_VIEWPORT['width']}x{HISTORY_VIEWPORT['height']}"
    print(f"wrote {args.history_output} ({size})")


if __name__ == "__main__":
    main()
