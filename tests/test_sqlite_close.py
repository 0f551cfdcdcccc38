"""Closing the SQLite store while other threads read from it (what a server's shutdown does
under load) lets running reads finish, refuses new ones with StoreUnavailable, releases the
files and never crashes the process. Run in a child process: the defect this guards against
was a segmentation fault."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from csatdist.errors import StoreUnavailable
    from csatdist.store.sqlite import SQLiteStore

    store = SQLiteStore(Path(sys.argv[1]))
    busy = threading.Barrier(3)
    outcomes = []
    LONG = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)"
        " SELECT count(*) FROM c"
    )

    def long_reads():
        busy.wait()
        try:
            while True:
                store._read_only(lambda run: run(LONG, ()))  # the stores' read path
        except Exception as exc:
            outcomes.append(type(exc).__name__)

    def short_reads():
        busy.wait()
        try:
            while True:
                store.account_version("acme")
        except StoreUnavailable:
            outcomes.append("StoreUnavailable")

    threads = [threading.Thread(target=long_reads), threading.Thread(target=short_reads)]
    for thread in threads:
        thread.start()
    busy.wait()
    time.sleep(0.3)
    started = time.monotonic()
    store.close()
    for thread in threads:
        thread.join(30)
    print(sorted(outcomes), round(time.monotonic() - started, 1))
    assert not store._readers  # every connection closed: the files are released
    assert not Path(sys.argv[1] + "-wal").exists()  # and the last one checkpointed
    """
)


def test_closing_the_store_under_running_reads_ends_them_without_a_crash(tmp_path: Path) -> None:
    for attempt in range(3):
        database = tmp_path / f"close-{attempt}.db"
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(database)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
        outcomes, seconds = child.stdout.rsplit("]", 1)
        # reads running at close finish; the next ones see a closed store
        assert outcomes + "]" == "['StoreUnavailable', 'StoreUnavailable']", child.stdout
        assert float(seconds) < 10, child.stdout
