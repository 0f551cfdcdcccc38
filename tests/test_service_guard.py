"""The shared-server guard (tests/service_guard.py) fails a run that restarted or stopped one.

Each case runs a small pytest session of its own with the guard watching a private server (as it
watches the machine's in the real run) and, while that session's only test waits, restarts or
stops the server from outside, as a careless test would have done to the machine's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.services import PrivateServer, identity, private_nats, private_postgres, private_redis

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

INNER_TEST = """
import os, time
from pathlib import Path

def test_while_the_server_is_handled_from_outside():
    Path(os.environ["GUARD_TEST_STARTED"]).touch()
    deadline = time.monotonic() + 60
    while not Path(os.environ["GUARD_TEST_GO_ON"]).exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
"""

FACTORIES: dict[str, Callable[[], contextlib.AbstractContextManager[PrivateServer]]] = {
    "PostgreSQL": private_postgres,
    "Redis": private_redis,
    "NATS": private_nats,
}


@pytest.fixture(params=list(FACTORIES))
def server(request: pytest.FixtureRequest) -> Iterator[PrivateServer]:
    with FACTORIES[request.param]() as private:
        yield private


def guarded_run(
    server: PrivateServer, tmp_path: Path, meanwhile: Callable[[], None]
) -> tuple[int, str]:
    """A pytest session guarding ``server``, during whose test ``meanwhile`` runs."""
    run_dir = tmp_path / f"run-{time.monotonic_ns()}"
    run_dir.mkdir()
    (run_dir / "test_inner.py").write_text(INNER_TEST)
    started, go_on = run_dir / "started", run_dir / "go-on"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CSATDIST_TEST_GUARDED_URLS": server.url,
        "GUARD_TEST_STARTED": str(started),
        "GUARD_TEST_GO_ON": str(go_on),
    }
    command = [sys.executable, "-m", "pytest", "-p", "tests.service_guard"]
    command += ["-p", "no:cacheprovider", "--rootdir", str(run_dir), str(run_dir)]
    process = subprocess.Popen(
        command, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the inner test did not start"
            time.sleep(0.02)
        meanwhile()
    finally:
        go_on.touch()
        output, _ = process.communicate(timeout=60)
    return process.returncode, output


def test_a_run_that_leaves_the_server_alone_passes(server: PrivateServer, tmp_path: Path) -> None:
    returncode, output = guarded_run(server, tmp_path, lambda: None)
    assert returncode == 0, output
    assert f"{server.name} 127.0.0.1" in output  # it was guarded, as the header says
    assert "changed during this test run" not in output


def test_a_restart_during_the_run_fails_it(server: PrivateServer, tmp_path: Path) -> None:
    before = identity(server.url)
    returncode, output = guarded_run(server, tmp_path, server.restart)
    assert identity(server.url) not in {None, before}  # it really was restarted
    assert returncode == 1, output
    assert "1 passed, 1 error" in output  # the test passed; the run did not
    assert "changed during this test run" in output
    assert f"{server.name} at 127.0.0.1:" in output
    assert f"was {before}; now {identity(server.url)}" in output


def test_a_server_stopped_during_the_run_fails_it(server: PrivateServer, tmp_path: Path) -> None:
    returncode, output = guarded_run(server, tmp_path, server.stop)
    assert returncode == 1, output
    assert f"{server.name} at 127.0.0.1:" in output
    assert "not answering (stopped or killed)" in output
