"""Running an emulator: in a background thread (tests), or as `pushgw emulate` until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import uvloop

from pushgw.emulators.apns import ApnsEmulator
from pushgw.emulators.fcm import FcmEmulator
from pushgw.logs import get_logger

log = get_logger(__name__)
DEFAULT_PORTS = {"apns": 2197, "fcm": 8443}
SUMMARY_INTERVAL_S = 10.0


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


class ServerThread(Generic[S]):
    """Runs an emulator on its own (uv)loop in a daemon thread, for synchronous code such as pytest tests."""

    def __init__(self, server: S) -> None:
        self.server = server
        self._loop = uvloop.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"{type(server).__name__}-thread", daemon=True)

    def start(self, timeout_s: float = 30.0) -> ServerThread[S]:
        """Start and wait until the server listens; re-raise what made it fail."""
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError(f"{type(self.server).__name__} did not start within {timeout_s}s")
        if self._error is not None:
            self._thread.join(timeout_s)
            raise RuntimeError(f"{type(self.server).__name__} failed to start") from self._error
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server (GOAWAY, close connections), then the loop; idempotent."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.server.start())
        except BaseException as error:  # re-raised by start() in the calling thread
            self._error = error
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def run_in_thread(server: S) -> ServerThread[S]:
    """Start `server` (an emulator) in a background thread; call `stop()` on the handle when done."""
    return ServerThread(server).start()


def run_emulator(kind: str, host: str, port: int, directory: Path, options: dict[str, Any]) -> int:
    """`pushgw emulate`: run the APNs or FCM emulator until SIGTERM/SIGINT, then exit 0.

    `options` are the emulator's keyword options, plus `summary_interval_s` for the periodic summary log.
    """
    options = dict(options)
    interval_s = float(options.pop("summary_interval_s", SUMMARY_INTERVAL_S))
    emulator: ApnsEmulator | FcmEmulator
    if kind == "apns":
        emulator = ApnsEmulator(directory=directory, host=host, port=port, **options)
    elif kind == "fcm":
        emulator = FcmEmulator(directory=directory, host=host, port=port, **options)
    else:
        raise ValueError(f"unknown emulator {kind!r}: expected apns or fcm")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(kind, emulator, interval_s))


async def _serve(kind: str, emulator: ApnsEmulator | FcmEmulator, interval_s: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with emulator:
        print(_banner(emulator), flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            _log_summary(kind, emulator)
    return 0


def _log_summary(kind: str, emulator: ApnsEmulator | FcmEmulator) -> None:
    counts = emulator.stats().to_json()
    counts.pop("requests_by_connection")
    log.info(f"{kind}_emulator_summary", **counts)


def _banner(emulator: ApnsEmulator | FcmEmulator) -> str:
    lines = [f"CA certificate:  {emulator.ca_file}"]
    if isinstance(emulator, ApnsEmulator):
        title = f"APNs emulator on {emulator.url} (HTTP/2 over TLS), auth: {emulator.auth}"
        if emulator.token_key_file is not None:
            key = f"{emulator.token_key_file} (key id {emulator.key_id}, team id {emulator.team_id})"
            lines.append(f"token key:       {key}")
        if emulator.client_certificate is not None:
            lines.append(f"client cert:     {emulator.client_certificate.cert_file}")
            lines.append(f"client key:      {emulator.client_certificate.key_file}")
        lines.append(f"notifications:   GET {emulator.url}/emulator/notifications?token=<device token>")
    else:
        title = f"FCM emulator on {emulator.url} (HTTP/2 and HTTP/1.1 over TLS)"
        lines.append(f"service account: {emulator.service_account_file} (project {emulator.project_id})")
        lines.append(f"messages:        GET {emulator.url}/emulator/messages?token=<registration token>")
    lines.append(f"stats:           GET {emulator.url}/emulator/stats")
    return "\n  ".join([title, *lines])
