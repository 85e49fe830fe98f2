"""`pushgw` subcommands: parse arguments, load settings, call one run_* function each."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import uvloop
from pydantic import SecretStr, ValidationError
from pymongo.errors import PyMongoError

from ppns.processes import run_processes
from ppns.server import run_node_until
from pushgw import doctor, push_commands, send_command
from pushgw.app import build_app
from pushgw.clock import SystemClock
from pushgw.connections import Connections
from pushgw.dev_sandbox import DevSandbox
from pushgw.emulators import add_emulate_parser
from pushgw.errors import PushgwError
from pushgw.http_server import dev_banner, intake_server, serve_processes
from pushgw.logs import configure_logging, get_logger
from pushgw.mongo import app_database
from pushgw.settings import AppSettings, ConfigError, PpnsSettings, QueueSettings, Settings, load_settings
from workers.providers.recording import RecordingProvider
from workers.providers.registry import build_providers
from workers.worker import run_worker_until

log = get_logger(__name__)
T = TypeVar("T")
DEV_APP_ID = "pushgw-dev"
DEV_MASTER_KEY = "dev-master-key"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log)
        return int(args.run(settings, args))
    except ConfigError as error:
        if args.command == "doctor":
            return doctor.config_failure(str(error))
        print(f"pushgw: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushgw", description="Parse-compatible push gateway.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, run, text in (
        ("serve", run_serve, "run the HTTP intake (POST /parse/push, /1/push)"),
        ("worker", run_worker, "run a worker of the delivery fleet"),
        ("ppns", run_ppns, "run a PPNS device socket server"),
        ("dev", run_dev, "everything in one process: embedded SecantusDB + in-process queue"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        _config_option(command)
        command.set_defaults(run=run)
    commands.choices["ppns"].add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="node processes on the port (SO_REUSEPORT), overrides [ppns] processes; see docs/ppns.md",
    )
    _push_commands(commands)
    send = commands.add_parser("send", help="send a push through the intake and wait until it is final")
    send_command.add_send_arguments(send)
    check = commands.add_parser("doctor", help="check config, MongoDB, broker and every credential")
    for command, action in ((send, run_send), (check, run_doctor)):
        _config_option(command)
        command.set_defaults(run=action)
    add_emulate_parser(commands)
    return parser


def _config_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", metavar="PATH", help="TOML config file (default: $PUSHGW_CONFIG)")


def _push_commands(commands: Any) -> None:
    push = commands.add_parser("push", help="inspect or cancel a push").add_subparsers(
        dest="action", required=True
    )
    status = push.add_parser("status", help="live progress of a push until it is final")
    status.add_argument("push_id")
    status.add_argument("--no-wait", action="store_true", help="print the current state once")
    cancel = push.add_parser(
        "cancel", help="skip a push's remaining batches; status failed, reason cancelled"
    )
    cancel.add_argument("push_id")
    listing = push.add_parser("list", help="recent pushes, newest first")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    listing.add_argument("--status", choices=["pending", "scheduled", "running", "succeeded", "failed"])
    listing.add_argument("--app", metavar="ID", help="only this app")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    dlq = commands.add_parser("dlq", help="the dead-letter queue").add_subparsers(
        dest="action", required=True
    )
    dlq.add_parser("list", help="list dead-lettered work items")
    replay = dlq.add_parser("replay", help="re-queue dead-lettered work items")
    replay.add_argument("ids", nargs="*", metavar="ID")
    replay.add_argument("--all", action="store_true", help="every item not yet finalized")
    for command in (status, cancel, listing, *dlq.choices.values()):
        _config_option(command)
        command.set_defaults(run=run_operator)


def run_operator(settings: Settings, args: argparse.Namespace) -> int:
    """`pushgw push …` / `pushgw dlq …`: connect, run the one action, disconnect."""
    return _run(_operator(settings, args))


async def _operator(settings: Settings, args: argparse.Namespace) -> int:
    if settings.queue.is_memory and args.command == "dlq" and args.action == "replay":
        raise ConfigError("queue.url is memory://: a separate process cannot reach `pushgw dev`'s queue")
    connections = await Connections.open(settings)
    try:
        return await _operate(settings, args, connections)
    except (PushgwError, PyMongoError) as error:
        print(f"pushgw {args.command} {args.action}: {error}", file=sys.stderr)
        return 1
    finally:
        await connections.close()


async def _operate(settings: Settings, args: argparse.Namespace, connections: Connections) -> int:
    if args.command == "push" and args.action == "list":
        return await send_command.list_pushes(with_dev_app(settings), connections, args)
    if args.command == "push" and args.action == "status":
        return await push_commands.push_status(settings, connections, args.push_id, wait=not args.no_wait)
    if args.command == "push":
        return await push_commands.push_cancel(settings, connections, args.push_id, SystemClock())
    if args.action == "list":
        return await push_commands.dlq_list(settings, connections)
    return await push_commands.dlq_replay(settings, connections, args.ids, args.all)


def run_send(settings: Settings, args: argparse.Namespace) -> int:
    """`pushgw send`: exit 0 succeeded, 1 failed, 2 usage or config, 3 rejected by the intake."""
    return _run(send_command.send_push(with_dev_app(settings), args))


def run_doctor(settings: Settings, _: argparse.Namespace) -> int:
    return doctor.print_checks(_run(doctor.run_checks(settings)))


def with_dev_app(settings: Settings) -> Settings:
    """Against `pushgw dev` (memory:// queue, no apps configured) the commands use its development app."""
    return dev_settings(settings) if settings.queue.is_memory and not settings.apps else settings


def run_serve(settings: Settings, _: argparse.Namespace) -> int:
    if settings.queue.is_memory:
        raise ConfigError(
            "queue.url is memory://, which only works inside `pushgw dev`; set queue.url = amqp://…"
        )
    if not settings.apps:
        raise ConfigError("apps: no [[apps]] configured; add one with app_id and master_key")
    if settings.http.processes > 1:
        return serve_processes(settings, lambda: build_app(settings))
    _run(intake_server(settings, build_app(settings)).serve())
    return 0


def run_dev(settings: Settings, _: argparse.Namespace) -> int:
    settings = dev_settings(settings)
    return _run(_serve_dev(settings))


def dev_settings(settings: Settings) -> Settings:
    """`pushgw dev`: the in-process queue, and a development app when none is configured."""
    apps = settings.apps or [AppSettings(app_id=DEV_APP_ID, master_key=SecretStr(DEV_MASTER_KEY))]
    return settings.model_copy(update={"queue": QueueSettings(url="memory://"), "apps": apps})


async def _serve_dev(settings: Settings) -> int:
    try:
        connections = await Connections.open(settings)
    except PushgwError as error:
        print(f"pushgw dev: {error}", file=sys.stderr)
        return 1
    sandbox = DevSandbox(settings, settings.mongo.embedded_path.parent / "emulators")
    await sandbox.start()
    settings = sandbox.settings
    clock = SystemClock()
    providers = build_providers(settings, connections.mongo, _recorder(settings, connections, clock))
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker_until(settings, connections, providers, clock, stop))
    try:
        app = build_app(settings, connections=connections, clock=clock)
        server = intake_server(settings, app, banner=dev_banner(settings, sandbox.banner_lines()))
        await server.serve()
    finally:
        stop.set()
        await worker
        await sandbox.stop()
        await connections.close()
    return 0


def run_worker(settings: Settings, _: argparse.Namespace) -> int:
    if settings.queue.is_memory:
        raise ConfigError(
            "queue.url is memory://, which only works inside `pushgw dev`; set queue.url = amqp://…"
        )
    if not settings.apps:
        raise ConfigError("apps: no [[apps]] configured; add one with app_id and master_key")
    return _run(_run_worker(settings))


async def _run_worker(settings: Settings) -> int:
    stop = _stop_on_signals()
    connections = await Connections.open(settings)
    try:
        clock = SystemClock()
        providers = build_providers(settings, connections.mongo, _recorder(settings, connections, clock))
        # What start-up built lives as long as the process: the collector stops walking it on every full
        # collection (a fan-out allocates a few objects per device; −15 % CPU per device measured).
        gc.freeze()
        await run_worker_until(settings, connections, providers, clock, stop)
    finally:
        await connections.close()
    return 0


def _recorder(settings: Settings, connections: Connections, clock: SystemClock) -> RecordingProvider | None:
    if not settings.recording.transports:
        return None
    databases = None
    if settings.recording.store == "mongo":
        databases = {app.app_id: app_database(connections.mongo, app) for app in settings.apps}
    recording = settings.recording
    return RecordingProvider(
        clock,
        fail_tokens=recording.fail_tokens,
        databases=databases,
        journal=recording.file if recording.store == "file" else None,
        keep=recording.store != "none",
        latency_ms=recording.latency_ms,
    )


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: the process drains and exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def run_ppns(settings: Settings, args: argparse.Namespace) -> int:
    ppns = settings.ppns
    if ppns is None:
        raise ConfigError("ppns: no [ppns] section configured; see docs/ppns.md")
    if args.processes is not None:
        try:
            ppns = PpnsSettings.model_validate({**ppns.model_dump(), "processes": args.processes})
        except ValidationError as error:
            problems = "; ".join(problem["msg"] for problem in error.errors())
            raise ConfigError(f"--processes {args.processes}: {problems}") from None
        settings = settings.model_copy(update={"ppns": ppns})
    if not settings.apps:
        raise ConfigError("apps: no [[apps]] configured; add one with app_id and master_key")
    if not ppns.plain_tcp and (ppns.cert_file is None or ppns.key_file is None):
        raise ConfigError("ppns.cert_file and ppns.key_file are required unless ppns.plain_tcp = true")
    if ppns.processes > 1:
        if not sys.platform.startswith("linux"):
            raise ConfigError("ppns.processes > 1 needs Linux (SO_REUSEPORT balancing, PR_SET_PDEATHSIG)")
        if settings.mongo.uri is None:
            raise ConfigError("ppns.processes > 1 needs mongo.uri: the processes share one database")
        return run_processes(settings)
    return _run(_run_ppns(settings))


async def _run_ppns(settings: Settings) -> int:
    await run_node_until(settings, _stop_on_signals())
    return 0


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop (Python 3.11 has no loop_factory for asyncio.run)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


if __name__ == "__main__":
    sys.exit(main())
