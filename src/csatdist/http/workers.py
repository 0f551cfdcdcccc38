"""``csatdist serve --workers N``: a supervisor that accepts every connection and hands it to the
worker holding the fewest open ones, and replaces a worker that dies.

Workers accepting on one shared socket do not share a client's connections: the worker whose
event loop wakes first accepts every connection waiting, so eight connections opened at once
split 2/6 more often than 4/4, and the worker holding six is saturated while the other idles.
Here only the supervisor accepts. It passes each new connection's descriptor to a worker over a
Unix socket (``SCM_RIGHTS``), as Node's cluster module does; the worker serves it as if it had
accepted it and reports every connection it closes, so the supervisor knows how many each
worker holds. A new connection goes to the ready worker holding the fewest (ties in turn).
The hand-off costs the supervisor one ``accept`` and one ``sendmsg`` per connection, nothing
per request.

Messages on a worker's channel (``SOCK_SEQPACKET``: one message per send, never merged):
supervisor → worker, one byte with a descriptor; worker → supervisor, ``R`` once it serves and
``C`` once per connection it has closed (several in one message when they pile up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import Any

import uvicorn
from uvicorn._subprocess import get_subprocess
from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger("csatdist.workers")

HANDED = b"H"
READY = b"R"
CLOSED = b"C"
#: How long the supervisor waits for a worker to take a connection when every worker's channel
#: is full (every worker is far behind) before it drops the connection.
HAND_TIMEOUT_SECONDS = 5.0
#: Connections accepted in one go before the supervisor looks at its workers' messages again.
ACCEPT_BURST = 64
#: How long the supervisor stops accepting after an accept failed (out of descriptors).
ACCEPT_PAUSE_SECONDS = 0.1


@dataclass
class _Worker:
    """One worker process as the supervisor sees it."""

    process: SpawnProcess
    channel: socket.socket  # the supervisor's end
    ready: bool = False  # serving, and its channel open
    served: bool = False  # was ready once: an exit is not a failure to start
    open: int = 0  # connections handed to it and not yet reported closed


class Supervisor:
    """Starts ``count`` workers running ``config``'s app, hands them connections, replaces any
    that dies; stops them all on SIGINT or SIGTERM. ``run`` returns the exit status."""

    def __init__(self, config: uvicorn.Config, count: int) -> None:
        self.config = config
        self.count = count
        self.workers: list[_Worker | None] = [None] * count
        self._selector = selectors.DefaultSelector()
        self._stopping = False
        self._status = 0
        self._turn = 0
        self._listening = False
        self._paused_until = 0.0  # after a failed accept (out of descriptors): not before

    def run(self) -> int:
        listener = self.config.bind_socket()  # bound now (a port in use fails here); listening
        listener.setblocking(False)  # once a worker serves, as one process does
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        self._selector.register(wake_read, selectors.EVENT_READ, None)
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        old_wakeup = signal.set_wakeup_fd(wake_write.fileno())
        try:
            for slot in range(self.count):
                self._start(slot)
            while not self._stopping:
                self._listen(listener)
                accept = False
                for key, _ in self._selector.select(timeout=self._wait()):
                    if key.fileobj is listener:
                        accept = True
                    elif key.data is None:
                        with contextlib.suppress(OSError):
                            wake_read.recv(512)
                    else:
                        self._messages(key.data)
                if accept:  # after the workers' news of the connections they closed
                    self._accept(listener)
                self._reap()
            log.info("stopping the workers")
        finally:
            if self._listening:
                self._selector.unregister(listener)
            listener.close()  # no new connections; those accepted are the workers'
            self._stop_workers()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            wake_read.close()
            wake_write.close()
        return self._status

    def _wait(self) -> float:
        """Seconds to wait for an event: until accepting resumes, else half a second (workers'
        exits are looked for between events)."""
        pause = self._paused_until - time.monotonic()
        return min(0.5, pause) if pause > 0 else 0.5

    def _stop(self, signum: int, frame: Any) -> None:
        self._stopping = True  # nothing more in a signal handler: the loop sees it

    def _start(self, slot: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = get_subprocess(self.config, WorkerTarget(self.config), [theirs])
        process.start()
        theirs.close()  # the worker has its copy
        ours.setblocking(False)
        worker = _Worker(process, ours)
        self.workers[slot] = worker
        self._selector.register(ours, selectors.EVENT_READ, slot)

    def _listen(self, listener: socket.socket) -> None:
        """Accept only while some worker can take a connection; until then they wait in the
        listening socket's backlog."""
        ready = any(w is not None and w.ready for w in self.workers)
        ready = ready and time.monotonic() >= self._paused_until
        if ready and not self._listening:
            listener.listen(self.config.backlog)  # again after a pause: only the backlog changes
            self._selector.register(listener, selectors.EVENT_READ, None)
        elif not ready and self._listening:
            self._selector.unregister(listener)
        self._listening = ready

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of descriptors: the rest wait in the backlog a while
                log.warning("accepting a connection failed: %s", exc)
                self._paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS
                return
            with conn:  # the worker has its own copy once handed; ours is closed either way
                self._hand(conn)

    def _hand(self, conn: socket.socket) -> None:
        candidates = sorted(
            (
                (worker.open, (slot - self._turn) % self.count, slot)
                for slot, worker in enumerate(self.workers)
                if worker is not None and worker.ready
            )
        )
        self._turn = (self._turn + 1) % self.count
        for _, _, slot in candidates:  # the least loaded first; a full channel: the next
            if self._send(slot, conn, blocking=False):
                return
        if candidates and self._send(candidates[0][2], conn, blocking=True):
            return
        log.warning("no worker could take a new connection; it was closed")

    def _send(self, slot: int, conn: socket.socket, *, blocking: bool) -> bool:
        worker = self.workers[slot]
        if worker is None:
            return False
        try:
            if blocking:
                worker.channel.settimeout(HAND_TIMEOUT_SECONDS)
            socket.send_fds(worker.channel, [HANDED], [conn.fileno()])
        except (BlockingIOError, TimeoutError):
            return False
        except OSError:  # the worker is gone: _reap replaces it
            worker.ready = False
            return False
        finally:
            if blocking:
                worker.channel.setblocking(False)
        worker.open += 1
        return True

    def _messages(self, slot: int) -> None:
        worker = self.workers[slot]
        if worker is None:
            return
        while True:
            try:
                message = worker.channel.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:  # the worker's end closed: it has exited or is exiting
                worker.ready = False
                self._selector.unregister(worker.channel)
                return
            if message == READY:
                worker.ready = worker.served = True
            else:
                worker.open = max(0, worker.open - message.count(CLOSED))

    def _reap(self) -> None:
        for slot, worker in enumerate(self.workers):
            if worker is None or worker.process.exitcode is None:
                continue
            self._forget(slot, worker)
            code = worker.process.exitcode
            if code == STARTUP_FAILURE and not worker.served:
                log.error("worker %d failed to start; stopping", worker.process.pid)
                self._status = STARTUP_FAILURE
                self._stopping = True
                return
            if not self._stopping:
                log.warning(
                    "worker %d exited (status %s); starting another", worker.process.pid, code
                )
                self._start(slot)

    def _forget(self, slot: int, worker: _Worker) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.channel)
        worker.channel.close()
        worker.process.join()
        self.workers[slot] = None

    def _stop_workers(self) -> None:
        alive = [w for w in self.workers if w is not None]
        for worker in alive:
            if worker.process.exitcode is None and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 10) + 5
        for worker in alive:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                log.warning("worker %d did not stop in time; killed", worker.process.pid)
                worker.process.kill()
                worker.process.join()
            worker.channel.close()
        self.workers = [None] * self.count


class WorkerTarget:
    """What a spawned worker runs (picklable, as a spawned process's target must be): its
    server, serving the connections the supervisor hands it over the channel."""

    def __init__(self, config: uvicorn.Config) -> None:
        self.config = config

    def __call__(self, sockets: list[socket.socket]) -> None:
        HandedServer(self.config, sockets[0]).run(sockets=[])


class HandedServer(uvicorn.Server):
    """uvicorn's server listening on nothing: its connections come from the supervisor."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self._channel = channel
        self._unreported = 0  # closed connections not yet told to the supervisor
        self._connecting: set[asyncio.Task[None]] = set()
        self._protocol_class: Callable[..., asyncio.Protocol] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        if self.should_exit or not self.started:
            return
        self._protocol_class = _reporting(self.config.http_protocol_class, self._closed)
        self._channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self._channel.fileno(), self._receive)
        self._tell(READY)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
        await super().shutdown(sockets=[])

    def _receive(self) -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self._channel, 16, 8)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:  # the supervisor is gone: stop as if told to
                asyncio.get_running_loop().remove_reader(self._channel.fileno())
                self.should_exit = True
                return
            for fd in fds:
                self._adopt(socket.socket(fileno=fd))

    def _adopt(self, sock: socket.socket) -> None:
        if self.should_exit:  # shutting down: not taken
            sock.close()
            self._closed()
            return
        task = asyncio.get_running_loop().create_task(self._serve_connection(sock))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _serve_connection(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: self._new_protocol(loop), sock, ssl=self.config.ssl
            )
        except (TimeoutError, OSError) as exc:  # reset, or a TLS handshake failed
            log.debug("a handed connection could not start: %s", exc)
            sock.close()
            self._closed()

    def _new_protocol(self, loop: asyncio.AbstractEventLoop) -> asyncio.Protocol:
        if self._protocol_class is None:  # not before startup has made it
            raise RuntimeError("a connection handed to a worker that is not serving yet")
        return self._protocol_class(
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=loop,
        )

    def _closed(self) -> None:
        self._unreported += 1
        if self._tell(CLOSED * self._unreported):
            self._unreported = 0

    def _tell(self, message: bytes) -> bool:
        try:
            self._channel.send(message)
        except OSError:  # full (sent with the next) or the supervisor is gone
            return False
        return True


def _reporting(base: type[asyncio.Protocol], closed: Callable[[], None]) -> type[asyncio.Protocol]:
    """``base`` telling ``closed`` whenever one of its connections ends."""

    class Reporting(base):  # type: ignore[misc,valid-type]
        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            closed()

    return Reporting
