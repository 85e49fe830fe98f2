"""The HTTP server around the intake app: uvicorn with pushgw's signal handling, one or several processes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
from collections.abc import Callable, Iterator, Sequence

import uvicorn
import uvloop

from pushgw.logs import get_logger
from pushgw.settings import Settings

log = get_logger(__name__)


class IntakeServer(uvicorn.Server):
    """uvicorn that exits 0 after a graceful drain, optionally printing the `pushgw dev` banner."""

    def __init__(self, config: uvicorn.Config, banner: str | None = None) -> None:
        super().__init__(config)
        self._banner = banner

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT start a graceful drain, then the process exits 0 (uvicorn would re-raise them)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._request_exit)
        try:
            yield
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def _request_exit(self) -> None:
        if self.should_exit:
            self.force_exit = True  # a second signal skips the drain
        self.should_exit = True
        log.info("shutdown_requested")

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._banner and self.started:
            print(self._banner, flush=True)


def intake_server(settings: Settings, app: object, banner: str | None = None) -> IntakeServer:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.http.host,
        port=settings.http.port,
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is judged by auth.client_ip against http.trusted_proxies
    )
    return IntakeServer(config, banner)


def serve_processes(settings: Settings, make_app: Callable[[], object]) -> int:
    """`http.processes` intake processes sharing one listening socket (the kernel spreads connections).

    The parent only supervises: SIGTERM/SIGINT are passed on, and if one process dies the others are
    stopped too, so an orchestrator restarts a whole, healthy unit. Exit code 0 after a clean drain.
    """
    listener = socket.create_server((settings.http.host, settings.http.port), reuse_port=False, backlog=2048)
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_serve_child, args=(settings, make_app, listener), name=f"pushgw-intake-{n}")
        for n in range(settings.http.processes)
    ]
    for child in children:
        child.start()
    listener.close()
    stopping = False

    def forward(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    multiprocessing.connection.wait([child.sentinel for child in children])
    if not stopping:
        log.error("intake_process_died", exit_codes=[child.exitcode for child in children])
        forward(signal.SIGTERM, None)
    for child in children:
        child.join()
    return 0 if stopping and all(child.exitcode == 0 for child in children) else 1


def _serve_child(settings: Settings, make_app: Callable[[], object], listener: socket.socket) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    server = intake_server(settings, make_app())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server.serve(sockets=[listener]))


def dev_banner(settings: Settings, providers: Sequence[str] = ()) -> str:
    http = settings.http
    base = f"http://{http.host}:{http.port}"
    app = settings.apps[0]
    curl = (
        f"curl -X POST {base}{http.mounts[0]}/push \\\n"
        f'  -H "X-Parse-Application-Id: {app.app_id}" \\\n'
        f'  -H "X-Parse-Master-Key: {app.master_key.get_secret_value()}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        """  -d '{"channels": ["news"], "data": {"alert": "Hello from pushgw"}}'"""
    )
    mongo = settings.mongo.uri or f"embedded SecantusDB, data in {settings.mongo.embedded_path}"
    lines = [
        "pushgw dev is running",
        f"  push:    {' '.join(base + mount + '/push' for mount in http.mounts)}",
        f"  health:  {base}/health   ready: {base}/ready   metrics: {base}/metrics",
        *(
            [f"  console: {base}{settings.console.path} (app id {app.app_id}, its master key)"]
            if settings.console.enabled
            else []
        ),
        f"  mongo:   {mongo}",
        "  queue:   memory:// (in-process)",
        *providers,
        "",
        "Send a push:",
        curl,
        "",
    ]
    return "\n".join(lines)
