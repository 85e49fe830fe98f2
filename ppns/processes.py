"""`[ppns] processes = N`: N PPNS nodes in N processes on one port, under a small supervisor.

One process holds at most RLIMIT_NOFILE sockets and one core; N processes hold N times as many. Each child
is a complete node of the several-nodes design (docs/ppns.md): its own node id `<node id>-<k>`, its own
RabbitMQ queue, its own presence `holder`s, its own metrics port (`metrics_port + k`). Each binds the
listener with SO_REUSEPORT, so the kernel spreads new connections over the children; pushes reach the child
holding a device through the existing routing by `holder`, and a device that reconnects to another child is
handed over like one that moves between hosts.

The supervisor (this module, the `pushgw ppns` process itself) only starts, restarts and stops children:

* it keeps a socket bound to the port with SO_REUSEPORT but not listening, so the port (`port = 0`
  included) stays reserved while a child restarts, and no other program can take it;
* SIGTERM/SIGINT: passed on to every child, which resets its devices and exits; then exit 0;
* a child that dies is restarted after 1, 2, 4, 8, 16, 30 s (its devices reconnect to the other children
  meanwhile: the kernel only offers connections to listening sockets); a child that ran for
  `STABLE_S` starts the backoff over. After `MAX_QUICK_DEATHS` deaths in a row that each came before
  `STABLE_S`, the supervisor stops the others and exits 1 (a child that cannot start, e.g. a certificate
  it cannot read, is not retried forever);
* children never outlive it: each asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), so
  even `kill -9` of the supervisor stops them (gracefully).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

import uvloop

from ppns.live import default_node_id
from ppns.server import run_node_until
from pushgw.logs import get_logger
from pushgw.settings import PpnsSettings, Settings

log = get_logger(__name__)
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_S = 60.0  # a child that ran this long restarts its backoff from the first step
MAX_QUICK_DEATHS = 7  # in a row, each before STABLE_S: give up (exit 1)
STOP_TIMEOUT_S = 45.0  # a child's own shutdown is bounded by a few SHUTDOWN_WAIT_S
PR_SET_PDEATHSIG = 1


def child_settings(settings: Settings, index: int, base_node_id: str, port: int) -> Settings:
    """Process `index`'s node: node id `<base>-<index>`, metrics port + index, the resolved port."""
    ppns = settings.ppns or PpnsSettings()
    metrics_port = ppns.metrics_port
    if metrics_port:  # 0 (any free port) stays 0
        metrics_port += index
    update = {
        "processes": 1,
        "node_id": f"{base_node_id}-{index}",
        "metrics_port": metrics_port,
        "port": port,
    }
    return settings.model_copy(update={"ppns": ppns.model_copy(update=update)})


@dataclass
class _Slot:
    index: int
    settings: Settings
    process: BaseProcess | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ppns = settings.ppns or PpnsSettings()
        self._context = multiprocessing.get_context("fork")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop_signal: int | None = None
        self._reserved = _reserve_port(self._ppns.host, self._ppns.port)
        port: int = self._reserved.getsockname()[1]
        base = self._ppns.node_id or default_node_id()
        self._slots = [_Slot(k, child_settings(settings, k, base, port)) for k in range(self._ppns.processes)]

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        gc.freeze()  # imported modules stay shared with the children: no collection touches their pages
        try:
            for slot in self._slots:
                self._start(slot)
            code = self._supervise()
        finally:
            self._stop_children()
            self._reserved.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        if code == 0 and not all(_clean(slot.process) for slot in self._slots):
            code = 1
        log.info("ppns_processes_stopped", exit_code=code)
        return code

    def _on_signal(self, signum: int, _: object) -> None:
        self._stop_signal = signum
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def _start(self, slot: _Slot) -> None:
        ppns = slot.settings.ppns
        assert ppns is not None
        process = self._context.Process(
            target=_child,
            args=(slot.settings, os.getpid(), (self._reserved.fileno(), self._wake_r, self._wake_w)),
            name=f"pushgw-ppns-{slot.index}",
        )
        process.start()
        slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None
        log.info(
            "ppns_process_started",
            process=slot.index,
            pid=process.pid,
            node_id=ppns.node_id,
            port=ppns.port,
            metrics_port=ppns.metrics_port,
        )

    def _supervise(self) -> int:
        """Until a stop signal (0) or too many quick deaths (1)."""
        while self._stop_signal is None:
            waiting = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
            timeout = None if not waiting else max(0.0, min(waiting) - time.monotonic())
            sentinels = [slot.process.sentinel for slot in self._slots if slot.process is not None]
            multiprocessing.connection.wait([*sentinels, self._wake_r], timeout)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 64)
            if self._stop_signal is not None:
                break
            now = time.monotonic()
            for slot in self._slots:
                alive = slot.process is None or slot.process.is_alive()
                if not alive and not self._died(slot, now):
                    return 1
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)
        return 0

    def _died(self, slot: _Slot, now: float) -> bool:
        """Schedule the restart of a child that exited; False: give up."""
        assert slot.process is not None
        ran_s = now - slot.started_at
        slot.quick_deaths = 1 if ran_s >= STABLE_S else slot.quick_deaths + 1
        code, slot.process = slot.process.exitcode, None
        if slot.quick_deaths >= MAX_QUICK_DEATHS:
            log.error(
                "ppns_process_gave_up",
                process=slot.index,
                exit_code=code,
                deaths=slot.quick_deaths,
                ran_s=ran_s,
            )
            return False
        delay = RESTART_BACKOFF_S[min(slot.quick_deaths, len(RESTART_BACKOFF_S)) - 1]
        slot.restart_at = now + delay
        log.error(
            "ppns_process_died", process=slot.index, exit_code=code, ran_s=round(ran_s, 1), restart_in_s=delay
        )
        return True

    def _stop_children(self) -> None:
        """SIGTERM to every child (each resets its devices), wait; SIGKILL what is still there after
        STOP_TIMEOUT_S."""
        running = [slot.process for slot in self._slots if slot.process is not None]
        for process in running:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("ppns_process_stop_timeout", pid=process.pid)
                process.kill()
                process.join()


def _clean(process: BaseProcess | None) -> bool:
    """Exited 0, or by the stop signal before its node installed its handler (or never restarted)."""
    return process is None or process.exitcode in (0, -signal.SIGTERM, -signal.SIGINT)


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bound with SO_REUSEPORT, never listening: holds the port for the children (only listening sockets
    take connections) and resolves `port = 0`. Fails like a listener would if another program has it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _child(settings: Settings, parent_pid: int, inherited: tuple[int, ...]) -> None:
    """One node process (forked): dies with the supervisor, runs the node until SIGTERM/SIGINT."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    for fd in inherited:  # the supervisor's reserved port and wake-up pipe
        with contextlib.suppress(OSError):
            os.close(fd)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        return  # the supervisor died before the kernel was told
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_node_until(settings, stop, reuse_port=True)


def run_processes(settings: Settings) -> int:
    """`pushgw ppns` with `processes > 1`: supervise the children; 0 after a stop signal, 1 if they could
    not be kept running."""
    try:
        supervisor = Supervisor(settings)
    except OSError as error:  # the port is taken (by a program that did not set SO_REUSEPORT)
        ppns = settings.ppns or PpnsSettings()
        log.error("ppns_listen_failed", host=ppns.host, port=ppns.port, error=str(error))
        return 1
    return supervisor.run()
