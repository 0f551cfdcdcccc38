"""The line in which the processes writing one SQLite database take its write lock.

SQLite lets one connection write at a time and gives the lock to no one in particular: a
process that wants it while another writes polls through its busy handler, sleeping up to
100 ms between tries, and the writer, committing and beginning again at once, nearly always
wins. Within a process the writer thread serves accounts in turn (``_Writer`` in
:mod:`csatdist.store.sqlite`), but the workers of ``serve --workers N`` each have their own:
with two workers, one account's ingest flood on one kept another account's one-answer write
on the other waiting 1.6 s (p99; 0.15 s with one worker). So each transaction of a writer
first takes a ticket here and waits until the tickets before it are done: the processes
write in the order they asked, and a writer running a long job while another process waits
commits after its running part, as it does for another account of its own process
(:meth:`WriterLine.others_waiting`).

The line is advisory: SQLite's lock still keeps the writes apart. A turn held by a process
that is gone (killed with a ticket) is skipped as soon as a waiter sees its pid is not alive
(or a zombie, once the turn has lasted 50 ms), and the tickets such processes left are skipped
when a writer opens the line. Pids are looked at only within one pid namespace: a writer in
another (a container sharing the volume) is waited for until its turn has lasted
:data:`STALL_SECONDS`, like a turn held that long by anyone (a migration, a purge of millions
of rows), and then skipped: the waiter then waits in SQLite's busy handler, as without the
line. A process that cannot open the file writes without it.

**Layout** of the file ``<database>-writers`` (4 KiB, mapped by every writer): the next
ticket, the ticket being served, then a ring of :data:`RING` owners, each the pid and pid
namespace of the process that took ticket ``number % RING`` (a writer has one ticket at a
time, so the ring holds every waiter's while fewer than :data:`RING` writers wait). Tickets
are taken and the turn passed under a file lock (a process killed holding it loses it); the
served ticket is read without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: Tickets whose owners the file keeps.
RING = 256
#: A turn held this long while others wait is taken to be stuck and skipped.
STALL_SECONDS = 2.0
#: A waiter looks at the line again after this long at first, then twice as long each time
#: up to :data:`POLL_MAX_SECONDS`: the turn changes hands within a millisecond or two of the
#: commit, and a waiter behind a long turn wakes a few hundred times a second at most.
POLL_FIRST_SECONDS = 0.0001
POLL_MAX_SECONDS = 0.002
#: A turn held this long has its owner looked at more closely: a killed process stays a zombie
#: (its pid still answers) until its parent reaps it.
ZOMBIE_CHECK_SECONDS = 0.05
_SIZE = 16 + 16 * RING


def _pid_namespace() -> int:
    """This process's pid namespace (its inode): pids mean something only within one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _gone(pid: int, *, closely: bool) -> bool:
    """Whether process ``pid`` (of this pid namespace) has ended; ``closely``: a zombie too."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    if not closely:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


class WriterLine:
    """This process's place in the line of a database's writers."""

    def __init__(self, database: Path) -> None:
        self.path = Path(f"{database}-writers")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)  # zeros; a size already reached is never cut again
                _owned_like(fd, Path(database))
            self._map = mmap.mmap(fd, _SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        view = memoryview(self._map)
        self._counters = view[:16].cast("Q")  # next ticket, ticket served
        self._owners = view[16:_SIZE].cast("q")  # per ticket: pid, pid namespace
        self._views = (view, self._counters, self._owners)
        self._namespace = _pid_namespace()
        self.closed = False
        with self._locked():
            self._skip_stale()

    @classmethod
    def open(cls, database: Path) -> WriterLine | None:
        """The line of ``database``'s writers, or None when its file cannot be opened (a
        directory the process may not write in: it writes without the line)."""
        try:
            return cls(database)
        except OSError as exc:
            log.warning(
                "SQLite writers of %s take the write lock without a line: %s", database, exc
            )
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.closed:
            raise ValueError(f"the writers' line {self.path} is closed")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _skip_stale(self) -> None:
        """Skip the tickets left by processes that are gone (killed while they waited or
        held the turn: what a server killed with -9 leaves), up to the first whose owner may
        be alive; the caller holds the lock. Counters the ring cannot account for (more
        tickets out than it holds) are reset."""
        taken, served = self._counters[0], self._counters[1]
        if served > taken or taken - served > RING:
            self._counters[1] = taken
            return
        while served < taken and self._owner_gone(served, closely=True):
            served += 1
        self._counters[1] = served

    def _owner_gone(self, ticket: int, *, closely: bool) -> bool:
        """Whether the process that took ``ticket`` is known to have ended: only a process of
        this pid namespace can be looked at (another's turn ends by :data:`STALL_SECONDS`)."""
        slot = 2 * (ticket % RING)
        if self._owners[slot + 1] != self._namespace:
            return False
        return _gone(self._owners[slot], closely=closely)

    def join(self) -> int:
        """Take a ticket and wait for its turn; the ticket, for :meth:`leave`."""
        with self._locked():
            ticket = self._counters[0]
            slot = 2 * (ticket % RING)
            self._owners[slot] = os.getpid()  # before the ticket counts as taken
            self._owners[slot + 1] = self._namespace
            self._counters[0] = ticket + 1
        served = self._counters[1]
        if served >= ticket:
            return ticket
        delay = POLL_FIRST_SECONDS
        since = time.monotonic()
        while True:
            time.sleep(delay)
            delay = min(2 * delay, POLL_MAX_SECONDS)
            now_served = self._counters[1]
            if now_served >= ticket:
                return ticket
            held = time.monotonic() - since
            if now_served != served:
                served, since = now_served, time.monotonic()
            elif self._owner_gone(served, closely=held > ZOMBIE_CHECK_SECONDS):
                self._skip(served, "its process is gone")
            elif held > STALL_SECONDS:
                self._skip(served, f"held over {STALL_SECONDS:g} s")
                since = time.monotonic()

    def _skip(self, ticket: int, why: str) -> None:
        if self._advance(ticket):
            log.info("skipped a turn in the SQLite writers' line: %s", why)

    def _advance(self, ticket: int) -> bool:
        """End ``ticket``'s turn if it is still the one served (else a waiter took it for
        stuck and went on): whether it was."""
        with self._locked():
            if self._counters[1] != ticket:
                return False
            self._counters[1] = ticket + 1
            return True

    def others_waiting(self, ticket: int) -> bool:
        """Whether a writer took a ticket after ``ticket`` (one waits for this turn's end)."""
        return self._counters[0] > ticket + 1

    def leave(self, ticket: int) -> None:
        """End ``ticket``'s turn: the next ticket's writer goes on."""
        self._advance(ticket)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for view in reversed(self._views):
            view.release()
        self._map.close()
        os.close(self._fd)


def _owned_like(fd: int, database: Path) -> None:
    """A line file made by root (a ``csatdist`` command run as root beside the server) gets
    the database's owner, as SQLite gives its ``-wal`` and ``-shm``: else the server's own
    user could not open it, and would write without the line."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        info = os.stat(database)
        os.fchown(fd, info.st_uid, info.st_gid)
