"""A newcomer's first hour, verbatim: the shell examples of the README, the operations guide and
the API reference run in order, as written, against a real `make demo`, and print what the
documents say they print.

Each document gets what a fresh clone gets: a new directory, the command `make demo` runs (read
from the Makefile) started there on a free port, and one bash shell (`-euo pipefail`) running
the document's run blocks in order, so a variable set in one block is there in the next. Only
the port differs from the documents (`127.0.0.1:8080` is replaced); `.venv/bin/csatdist` in that
directory runs this interpreter's csatdist; no `CSATDIST_*` variable of the test's environment
reaches the server or the shell. How blocks are marked: tests/doc_blocks.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from tests.doc_blocks import (
    FIXED_TIME,
    Document,
    MarkupError,
    RunBlock,
    matches,
    normalise,
    parse,
)
from tests.helpers import free_port, require_service

ROOT = Path(__file__).resolve().parents[1]
#: The documents whose shell blocks are all marked, run or skip (tests/doc_blocks.py).
DOCUMENTS = ("README.md", "docs/operations.md", "docs/api.md")
DOCUMENTED_ADDRESS = "127.0.0.1:8080"
#: `csatdist query` and friends print Rich tables on a terminal; a run block marked `terminal`
#: gets these so that it prints what the document shows (100 columns, no colours).
TERMINAL = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1", "COLUMNS": "100"}


def document(name: str) -> Document:
    return parse(ROOT / name, name)


def demo_command() -> list[str]:
    """`make demo`'s command line, from the Makefile, run by this interpreter."""
    recipe = re.search(r"^demo:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe is not None, "the Makefile has no demo target"
    program, *arguments = shlex.split(recipe.group(1))
    assert program == "$(BIN)/csatdist", recipe.group(1)
    return [sys.executable, "-m", "csatdist", *arguments]


def clean_environment() -> dict[str, str]:
    """The test's environment without csatdist settings or terminal overrides: a newcomer's."""
    dropped = {"TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "COLUMNS", "LINES"}
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CSATDIST_") and name not in dropped
    }


@dataclass
class Demo:
    """`make demo` running in ``clone`` on ``port``."""

    clone: Path
    port: int
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @classmethod
    def start(cls, clone: Path, run: int) -> Demo:
        port = free_port()
        stdout, stderr = clone / f".demo-{run}.out", clone / f".demo-{run}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [*demo_command(), "--port", str(port)],
                cwd=clone,
                stdout=out,
                stderr=err,
                env={**clean_environment(), "PYTHONUNBUFFERED": "1"},
            )
        demo = cls(clone, port, process, stdout, stderr)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"make demo's server exited: {demo.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return demo
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                demo.stop()
                raise RuntimeError(f"make demo's server did not start: {demo.log()}")
            time.sleep(0.1)

    def printed(self) -> str:
        return self.stdout.read_text()

    def log(self) -> str:
        tail = self.stderr.read_text()[-3000:]
        return f"\n--- server stdout ---\n{self.printed()}\n--- server stderr (end) ---\n{tail}"

    def stop(self) -> None:
        """Ctrl-C, as in the terminal running `make demo`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def new_clone(directory: Path) -> Path:
    """A directory standing for a fresh clone after `make demo` created its .venv."""
    clone = directory / "clone"
    bin_dir = clone / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "csatdist"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m csatdist "$@"\n')
    wrapper.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return clone


def at_port(text: str, port: int) -> str:
    return text.replace(DOCUMENTED_ADDRESS, f"127.0.0.1:{port}")


def shell_script(blocks: list[RunBlock], port: int, outputs: Path) -> str:
    """One shell for all blocks, each block's output in files of its own; `current` names the
    block running when the shell stops."""
    lines = []
    for index, block in enumerate(blocks):
        out = shlex.quote(str(outputs / f"{index}"))
        lines.append(f"printf '%s\\n' {index} > {shlex.quote(str(outputs / 'current'))}")
        if block.terminal:
            lines.append("export " + " ".join(f"{k}={v}" for k, v in TERMINAL.items()))
        lines.append(f"{{\n{at_port(block.code, port)}\n}} > {out}.out 2> {out}.err")
        if block.terminal:
            lines.append("unset " + " ".join(TERMINAL))
    lines.append(f"printf 'done\\n' > {shlex.quote(str(outputs / 'current'))}")
    return "\n".join(lines) + "\n"


def report(block: RunBlock, outputs: Path, index: int, port: int) -> str:
    printed = [outputs / f"{index}.{stream}" for stream in ("out", "err")]
    out, err = (normalise(path.read_text()) if path.exists() else "" for path in printed)
    return (
        f"--- the block ---\n{at_port(block.code, port)}--- it printed ---\n{out}"
        f"--- on stderr ---\n{err}"
    )


def run_document(doc: Document, clone: Path, demo: Demo) -> None:
    outputs = clone.parent / "outputs"
    outputs.mkdir()
    script = clone.parent / "blocks.sh"
    script.write_text(shell_script(doc.runs, demo.port, outputs))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", str(script)],
        cwd=clone,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    current = (outputs / "current").read_text().strip() if (outputs / "current").exists() else ""
    failed = result.returncode != 0 or current != "done"
    stopped_at = (int(current) if current.isdigit() else 0) if failed else len(doc.runs)
    # In order, so the first sign of trouble comes first (a wrong database shows as a 401 body
    # blocks before a command exits non-zero).
    problems = []
    for index, block in enumerate(doc.runs[:stopped_at]):
        if block.expected is None:
            continue
        printed = (outputs / f"{index}.out").read_text()
        if not matches(at_port(block.expected, demo.port), printed):
            problems.append(
                f"{block.name} printed something else than the document shows.\n"
                f"--- the document shows ---\n{at_port(block.expected, demo.port)}"
                f"{report(block, outputs, index, demo.port)}"
            )
    if failed:
        block = doc.runs[stopped_at]
        problems.append(
            f"{block.name} failed with exit status {result.returncode}\n"
            f"{report(block, outputs, stopped_at, demo.port)}{result.stderr}"
        )
    if problems:
        pytest.fail("\n\n".join(problems) + demo.log(), pytrace=False)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    require_service("curl", shutil.which("curl") is not None, "apt-get install curl")
    return new_clone(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", DOCUMENTS)
def test_the_documents_shell_examples_run_against_make_demo(name: str, clone: Path) -> None:
    doc = document(name)
    assert doc.runs, f"{name} has no run blocks"
    demo = Demo.start(clone, 1)
    try:
        first = doc.demo.get("first")
        if first is not None:
            assert matches(at_port(first, demo.port), demo.printed()), (
                f"make demo printed something else than {name} shows:\n{demo.printed()}"
            )
        run_document(doc, clone, demo)
    finally:
        demo.stop()
    restart = doc.demo.get("restart")
    if restart is not None:  # the same clone, `make demo` again
        again = Demo.start(clone, 2)
        try:
            assert matches(at_port(restart, again.port), again.printed()), (
                f"make demo, run again, printed something else than {name} shows:\n"
                f"{again.printed()}"
            )
            assert_own_keys_survive(clone)
        finally:
            again.stop()


def assert_own_keys_survive(clone: Path) -> None:
    """A restarted demo revokes only its own keys, not those the document had you create."""
    listed = subprocess.run(
        [*demo_command()[:3], "keys", "list", "--json", "--database", "demo.db"],
        cwd=clone,
        env=clean_environment(),
        capture_output=True,
        check=True,
    )
    keys = orjson.loads(listed.stdout)
    own = [key for key in keys if key["label"] != "demo"]
    assert own, keys
    assert all(key["revoked_ms"] is None for key in own), own


def test_the_readme_shows_what_make_demo_prints() -> None:
    assert set(document("README.md").demo) == {"first", "restart"}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_run_blocks_compute_times_instead_of_writing_them(name: str) -> None:
    """A date written into an example is outside the 24 h retention a day later."""
    for block in document(name).runs:
        fixed = FIXED_TIME.search(block.code)
        assert fixed is None, f"{block.name} has the fixed time {fixed.group()!r}; use `date`"


def test_every_shell_block_of_a_runnable_document_is_marked(tmp_path: Path) -> None:
    unmarked = tmp_path / "unmarked.md"
    unmarked.write_text("Try:\n\n```sh\ncsatdist version\n```\n")
    with pytest.raises(MarkupError, match=r"unmarked\.md:3: a shell block without"):
        parse(unmarked, "unmarked.md")
    unexplained = tmp_path / "unexplained.md"
    unexplained.write_text("<!-- doc-test: skip -->\n```sh\ncsatdist consume\n```\n")
    with pytest.raises(MarkupError, match="say why"):
        parse(unexplained, "unexplained.md")


def test_an_expected_output_matches_exactly_but_for_its_ellipses() -> None:
    assert matches('{"accepted":1,"duplicates":0}\n', '{"accepted":1,"duplicates":0}')
    assert not matches('{"accepted":1,"duplicates":0}\n', '{"accepted":0,"duplicates":1}')
    assert matches("key … for account 5\n", "key 0123abcd for account 5\n")
    assert not matches("key … for account 5\n", "key 0123abcd for account 6\n")
    assert matches("a\n…\nz\n", "a\nb\nc\nz\n")
    assert matches("a\n…\nz\n", "a\nz\n")
    assert not matches("a\nz\n", "a\nb\nz\n")  # no line is skipped without an ellipsis
    assert matches("x: 1\n", "\x1b[1mx\x1b[0m: 1  \r\n\n")  # colours, spaces, CR, end blanks


def test_a_fixed_time_is_recognised() -> None:
    assert FIXED_TIME.search('"time": "2026-11-27T13:21:00Z"')
    assert FIXED_TIME.search('"time": 1795786140000')
    assert not FIXED_TIME.search('NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ); echo "$NOW"')


def test_normalise_keeps_inner_blank_lines() -> None:
    assert normalise("a\n\nb\n\n\n") == "a\n\nb\n"
