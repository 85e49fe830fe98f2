"""Fan-out benchmark: one push to N installations through intake → RabbitMQ → 2 workers → instant provider.

One run, one process tree:
  1. start a SecantusDB (temp storage), seed `_SCHEMA` and, per size, top the `_Installation` collection up to
     N Parse-shaped installations (ios/android, all on channel "news", each with `_p_user` → its own user);
     sizes run in ascending order, so the collection always holds exactly the audience being pushed;
  2. start `pushgw serve` and two `pushgw worker` processes (unique queue prefix, recording provider that
     accepts instantly and keeps nothing, `store = "none"`); wait for /ready and for two consumers on each work queue, then
     send an empty-audience probe push through the whole pipeline;
  3. fan-out, per size: drain the planner's exact audience cursor with nothing else running (the database
     ceiling), then `--repeats` times (default 3): POST `{"channels": ["news"]}`, poll `_PushStatus` until
     final, drain again; the median push is compared with the median drain;
  4. transactional: restart the workers with `store = "file"` (each delivery is a JSON line in one journal
     file, stamped with the worker's clock: recording adds no load to the database being measured), POST N
     single-user pushes from a few keep-alive clients as fast as the intake accepts them (the throughput
     target), then the same number paced at `--tx-rate` (default 500/s: the latency target, judged where
     the fleet is offered the target rate rather than more than it can take); latency = first recorded
     delivery − the client's 200 arrival, per push;
  5. print the issue's targets with PASS/MISS, optionally one JSON object; stop every process, delete the
     queues and exchanges of the prefix and the temp dir, also on Ctrl-C or error.

Run: `.venv/bin/python bench/fanout.py [--sizes 100000,200000] [--million] [--transactional 1000]
[--tx-rate 500] [--skip-fanout] [--json] [--profile DIR] [--mongo-timeout-ms MS]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import aio_pika
import bson
import uvloop
from aio_pika.abc import AbstractRobustConnection
from harness import (
    BenchError,
    CpuMeter,
    cpu_seconds,
    free_port,
    json_safe,
    keep_logs,
    latency_text,
    raise_interrupt,
    stop_process,
    tail,
    wait_for_quiet,
)
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from pushgw.errors import INTERNAL_SERVER_ERROR
from pushgw.mongo import Document, create_client
from pushgw.push import parse_push
from pushgw.push_status import COLLECTION as STATUS
from pushgw.push_status import TERMINAL, fail_push
from pushgw.settings import WorkerSettings
from pushgw.topology import PLAN, SEND, Topology
from workers.audience import translate_where
from workers.devices import PROJECTION, split_rows, to_device
from workers.planner import MongoSubqueries, SchemaCache, pins_indexed_field, server_filter
from workers.row_cursor import row_batches

REPO = Path(__file__).resolve().parent.parent
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
APP_ID, MASTER_KEY, DATABASE = "bench", "bench-master-key", "bench_fanout"
INSTALLATIONS, USERS = "_Installation", "_User"
DELAY_TIERS_S = (5, 30, 120, 600, 1800)  # pushgw's default worker.delay_tiers_s: the queues to delete
FANOUT_BODY: dict[str, Any] = {"channels": ["news"], "data": {"alert": "bench fan-out"}}
PROBE_BODY: dict[str, Any] = {"channels": ["bench-probe-nobody"], "data": {"alert": "probe"}}
SEED_CHUNK, CURSOR_BATCH = 2000, 2000  # CURSOR_BATCH: the planner's find(batch_size=…)
FANOUT_POLL_S, TX_POLL_S, PROGRESS_EVERY_S = 0.05, 1.0, 5.0  # tx latency comes from the journal
FANOUT_SLOW_POLL_S, FANOUT_FAST_POLL_S = 0.25, 0.02
RECORDED_FILE = "recorded.jsonl"  # the recording provider's journal (store = "file") in the run's temp dir
START_TIMEOUT_S, STOP_TIMEOUT_S, PROBE_TIMEOUT_S = 60.0, 30.0, 120.0
GIVE_UP_RETRIES = 2  # a fan-out push whose units the workers retried this often will not finish
BENCH_MONGO_TIMEOUT_MS = 900_000  # the bench's own reads (ceiling drains) must never time out
TARGET_SHARE, TARGET_GROWTH_SLACK = 0.80, 1.10  # 200k ≤ 2.2 × 100k: size ratio × 1.1
TARGET_TX_RATE, TARGET_TX_P99_MS = 500.0, 150.0
PROFILE_RATE_HZ = 100
FOREIGN_CPU_WARNING = 20.0  # % of one core used by processes this bench did not start
DEVICE_TYPES = ("ios", "android")
TIME_ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC", "America/Los_Angeles")
LOCALES = ("en-US", "de-DE", "ja-JP", "fr-FR", "pt-BR")
Answer = tuple[int, dict[bytes, bytes], bytes]


def say(text: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


@dataclass
class Stack:
    """What this run started: temp dir, ports, child processes, clients and the queue prefix."""

    tmp: Path
    prefix: str = field(default_factory=lambda: f"fanout{uuid.uuid4().hex[:10]}")
    mongo_port: int = 0
    http_port: int = 0
    mongo_timeout_ms: int | None = None
    mongo: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_logs: list[Path] = field(default_factory=list)
    profilers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    client: AsyncMongoClient[Document] | None = None
    rabbit: AbstractRobustConnection | None = None
    seeded: int = 0
    users: set[int] = field(default_factory=set)
    installation_indexes: list[str] = field(default_factory=lambda: WorkerSettings().installation_indexes)
    send_inline: bool = True
    intake_processes: int = 1

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/?directConnection=true"

    @property
    def db(self) -> AsyncDatabase[Document]:
        assert self.client is not None
        return self.client.get_database(DATABASE)

    def pids(self) -> dict[str, int]:
        named = {"pushgw serve": self.gateway, "secantus": self.mongo}
        named |= {f"worker{n}": worker for n, worker in enumerate(self.workers, 1)}
        return {name: p.pid for name, p in named.items() if p is not None} | {"bench": os.getpid()}

    def exited(self) -> list[str]:
        """Children that ended although the run still needs them (something outside may have killed them)."""
        named = [("SecantusDB", self.mongo), ("pushgw serve", self.gateway)]
        named += [(f"worker{n}", worker) for n, worker in enumerate(self.workers, 1)]
        return [
            f"{name} (pid {process.pid}) exited with code {process.returncode}"
            for name, process in named
            if process is not None and process.poll() is not None
        ]

    def check_alive(self) -> None:
        if gone := self.exited():
            raise BenchError("; ".join(gone))


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A child in its own session: Ctrl-C reaches only the bench, which then stops children in order."""
    with log.open("ab") as out:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip


async def wait_until(
    ready: Callable[[], Awaitable[bool]], what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not await ready():
        if process.poll() is not None:
            raise BenchError(f"{what} exited with code {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready within {START_TIMEOUT_S:.0f} s:\n{tail(log)}")
        await asyncio.sleep(0.05)  # poll interval while a child starts


async def start_secantus(stack: Stack) -> None:
    stack.mongo_port = free_port()
    storage, log = stack.tmp / "mongo", stack.tmp / "secantus.log"
    storage.mkdir()
    stack.mongo = spawn(
        [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(stack.mongo_port),
         "--storage-path", str(storage), "--log-level", "WARNING"],
        log,
    )  # fmt: skip
    probe: AsyncMongoClient[Document] = AsyncMongoClient(stack.mongo_uri, serverSelectionTimeoutMS=250)

    async def pings() -> bool:
        try:
            await probe.admin.command("ping")
        except PyMongoError:
            return False
        return True

    try:
        await wait_until(pings, "SecantusDB", stack.mongo, log)
    finally:
        await probe.close()
    stack.client = create_client(stack.mongo_uri, BENCH_MONGO_TIMEOUT_MS)  # pushgw's codec options


def write_config(stack: Stack, store: str) -> Path:
    """The one config every pushgw process of this run reads; `store` only matters to workers."""
    path = stack.tmp / f"pushgw-{store}.toml"
    timeout = f"timeout_ms = {stack.mongo_timeout_ms}\n" if stack.mongo_timeout_ms else ""
    path.write_text(
        f'[mongo]\nuri = "{stack.mongo_uri}"\n{timeout}\n'
        f'[queue]\nurl = "{RABBIT_URL}"\nprefix = "{stack.prefix}"\n\n'
        f'[http]\nhost = "127.0.0.1"\nport = {stack.http_port}\nprocesses = {stack.intake_processes}\n\n'
        "[worker]\nshutdown_timeout_s = 5\n"  # teardown must not wait 30 s for abandoned plans
        f"send_small_pushes_inline = {json.dumps(stack.send_inline)}\n"
        f"installation_indexes = {json.dumps(stack.installation_indexes)}\n\n"
        f'[recording]\ntransports = ["apns", "fcm", "ppns"]\nstore = "{store}"\n'
        f'file = "{stack.tmp / RECORDED_FILE}"\n\n'
        '[log]\nlevel = "warning"\n\n'
        f'[[apps]]\napp_id = "{APP_ID}"\nmaster_key = "{MASTER_KEY}"\nmongo_database = "{DATABASE}"\n'
    )
    return path


def pushgw_args(command: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "pushgw.cli", command, "--config", str(config)]


async def start_gateway(stack: Stack) -> None:
    stack.http_port = free_port()
    log = stack.tmp / "serve.log"
    stack.gateway = spawn(pushgw_args("serve", write_config(stack, "memory")), log)

    async def ready() -> bool:
        return await http_status(stack.http_port, "/ready") == 200

    await wait_until(ready, "pushgw serve", stack.gateway, log)


async def start_workers(stack: Stack, store: str, count: int = 2) -> None:
    """Start `count` workers and wait until each work queue has `count` consumers (worker_started)."""
    config = write_config(stack, store)
    for n in range(1, count + 1):
        log = stack.tmp / f"worker{n}-{store}.log"
        stack.workers.append(spawn(pushgw_args("worker", config), log))
        stack.worker_logs.append(log)

    async def consuming() -> bool:
        return all([await consumer_count(stack, route) == count for route in (PLAN, SEND)])

    await wait_until(consuming, f"{count} workers ({store} store)", stack.workers[0], stack.worker_logs[0])
    stack.check_alive()


async def stop_workers(stack: Stack) -> None:
    await asyncio.gather(
        *(asyncio.to_thread(stop_process, worker, STOP_TIMEOUT_S) for worker in stack.workers)
    )
    stack.workers.clear()
    deadline = time.monotonic() + START_TIMEOUT_S
    while await consumer_count(stack, PLAN) or await consumer_count(stack, SEND):
        if time.monotonic() > deadline:
            raise BenchError("the broker still lists consumers of stopped workers")
        await asyncio.sleep(0.05)  # poll interval, up to the deadline above (the broker drops consumers late)


async def consumer_count(stack: Stack, route: str) -> int:
    if stack.rabbit is None:
        stack.rabbit = await aio_pika.connect_robust(RABBIT_URL, timeout=10)
    channel = await stack.rabbit.channel()
    try:
        queue = await channel.declare_queue(f"{stack.prefix}.{route}", passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return 0  # not declared yet: nobody consumes
    count: int = queue.declaration_result.consumer_count or 0
    await channel.close()
    return count


async def delete_topology(stack: Stack) -> None:
    topology = Topology(stack.prefix, 1, DELAY_TIERS_S)
    queues = [topology.queue(PLAN), topology.queue(SEND), topology.dead_queue]
    queues += [topology.delay_queue(tier) for tier in DELAY_TIERS_S]
    exchanges = [topology.work_exchange, topology.dead_exchange, topology.delay_exchange]
    connection = stack.rabbit or await aio_pika.connect_robust(RABBIT_URL, timeout=10)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    stack.rabbit = None


def teardown(stack: Stack, runner: asyncio.Runner) -> None:
    """Profilers, workers and gateway first (they would redeclare queues), then queues, clients, database."""
    for profiler in stack.profilers:
        stop_process(profiler, STOP_TIMEOUT_S, signal.SIGINT)
    for process in [*stack.workers, stack.gateway]:
        stop_process(process, STOP_TIMEOUT_S)
    try:
        runner.run(asyncio.wait_for(delete_topology(stack), STOP_TIMEOUT_S))
    except (OSError, aio_pika.exceptions.AMQPError, RuntimeError, TimeoutError) as error:
        print(f"WARNING: could not delete queues/exchanges {stack.prefix}.*: {error!r}", file=sys.stderr)
    if stack.client is not None:
        with contextlib.suppress(Exception):  # a dead or stuck database must not keep the bench alive
            runner.run(asyncio.wait_for(stack.client.close(), 10))
    stop_process(stack.mongo, STOP_TIMEOUT_S)


# ---------------------------------------------------------------- HTTP: a minimal keep-alive HTTP/1.1 client


class HttpConnection:
    """One keep-alive connection to the intake (raw asyncio streams: the load generator stays cheap)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> Answer:
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self._port)
        reader, writer = self._streams
        writer.write(request_bytes(self._port, method, path, body))
        try:
            answer = await read_response(reader)
        except BaseException:
            await self.close()
            raise
        if answer[1].get(b"connection", b"").lower() == b"close":
            await self.close()
        return answer

    async def close(self) -> None:
        streams, self._streams = self._streams, None
        if streams is not None:
            streams[1].close()
            with contextlib.suppress(OSError):
                await streams[1].wait_closed()


def request_bytes(port: int, method: str, path: str, body: bytes) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"X-Parse-Application-Id: {APP_ID}\r\nX-Parse-Master-Key: {MASTER_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> Answer:
    lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"transfer-encoding" in headers:
        raise BenchError("chunked answers are not supported by this client")
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


async def http_status(port: int, path: str) -> int | None:
    connection = HttpConnection(port)
    try:
        return (await connection.request("GET", path))[0]
    except (OSError, asyncio.IncompleteReadError):
        return None
    finally:
        await connection.close()


def push_body(push: dict[str, Any]) -> bytes:
    return json.dumps(push, separators=(",", ":")).encode()


async def post_push(connection: HttpConnection, push: dict[str, Any]) -> str:
    """POST one push; its `_PushStatus` objectId, or BenchError for anything but a correct 200."""
    status, headers, body = await connection.request("POST", "/parse/push", push_body(push))
    push_id = headers.get(b"x-parse-push-status-id")
    if status != 200 or push_id is None:
        raise BenchError(f"push refused: HTTP {status} {body[:300]!r}")
    return push_id.decode()


# ---------------------------------------------------------------- data


@functools.cache
def parse_data() -> ModuleType:
    """tests/fixtures/parse_data.py: the Parse-shaped documents the test suite uses (read-only reuse)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("tests.fixtures.parse_data")


def installation_key(index: int) -> str:
    return f"I{index:09d}"


def user_key(index: int) -> str:
    return f"U{index:09d}"


def installation_doc(index: int) -> dict[str, Any]:
    device_type = DEVICE_TYPES[index % len(DEVICE_TYPES)]
    extra: dict[str, Any] = {"badge": index % 7} if device_type == "ios" else {}
    document: dict[str, Any] = parse_data().installation(
        device_type,
        _id=installation_key(index),
        user=user_key(index),
        timeZone=TIME_ZONES[index % len(TIME_ZONES)],
        localeIdentifier=LOCALES[index % len(LOCALES)],
        appName="Bench", appVersion="4.2.0", parseVersion="4.3.0",
        **extra,
    )  # fmt: skip
    return document


async def seed_schema(db: AsyncDatabase[Document]) -> None:
    schema = db.get_collection("_SCHEMA")
    for document in (parse_data().INSTALLATION_SCHEMA, parse_data().USER_SCHEMA):
        await schema.replace_one({"_id": document["_id"]}, document, upsert=True)


async def top_up(stack: Stack, target: int) -> dict[str, Any]:
    """Insert installations stack.seeded … target-1 with insert_many in chunks; the insert rate."""
    first, collection = stack.seeded, stack.db.get_collection(INSTALLATIONS)
    if target <= first:
        return {"inserted": 0, "total": first}
    say(f"seeding installations {first:,} → {target:,}")
    started, noted = time.perf_counter(), time.monotonic()
    for start in range(first, target, SEED_CHUNK):
        stop = min(target, start + SEED_CHUNK)
        await collection.insert_many([installation_doc(i) for i in range(start, stop)], ordered=False)
        stack.seeded = stop
        if time.monotonic() - noted >= PROGRESS_EVERY_S * 2:
            noted = time.monotonic()
            say(f"  … {stop:,} ({(stop - first) / (time.perf_counter() - started):,.0f} docs/s)")
    seconds = time.perf_counter() - started
    rate = (target - first) / seconds
    say(f"seeded {target - first:,} installations in {seconds:.1f} s ({rate:,.0f} docs/s)")
    return {
        "inserted": target - first,
        "total": target,
        "seconds": round(seconds, 2),
        "docs_per_s": round(rate),
    }


async def seed_users(stack: Stack, indices: list[int]) -> None:
    """The `_User` rows the transactional pushes point at (pointers need no target, but Parse has them)."""
    missing = [index for index in indices if index not in stack.users]
    users = stack.db.get_collection(USERS)
    for start in range(0, len(missing), SEED_CHUNK):
        chunk = missing[start : start + SEED_CHUNK]
        await users.insert_many(
            [parse_data().user(f"user{i}", _id=user_key(i)) for i in chunk], ordered=False
        )
    stack.users.update(missing)


# ---------------------------------------------------------------- the database ceiling


async def planner_filter(db: AsyncDatabase[Document], push: dict[str, Any]) -> dict[str, Any]:
    """The exact filter the planner sends for `push` (parse_push → translate_where → server_filter)."""
    where = parse_push(dict(push), now=datetime.now(UTC)).where
    runner = MongoSubqueries(db, "", SchemaCache(0))
    schema = await runner.schema_for(INSTALLATIONS)
    return server_filter(await translate_where(where, schema, runner, now=datetime.now(UTC)))


async def drain(
    db: AsyncDatabase[Document], mongo_filter: dict[str, Any], indexes: list[str]
) -> dict[str, Any]:
    """The planner's cursor fully drained by SecantusDB alone: raw batches, projection, batch size, sort
    `_id`, and `hint("_id_")` unless the filter pins one of pushgw's installation indexes (workers/planner.py
    `_pages`); rows are counted, never decoded, as the planner does."""
    collection = db.get_collection(INSTALLATIONS)
    hinted = not pins_indexed_field(mongo_filter, indexes)
    started = time.perf_counter()
    cursor = row_batches(collection, mongo_filter, PROJECTION, batch_size=CURSOR_BATCH, hint_id=hinted)
    first_s, count = None, 0
    async for reply in cursor:
        count += len(split_rows(reply))
        first_s = first_s or time.perf_counter() - started
    seconds = time.perf_counter() - started
    return {
        "docs": count, "seconds": round(seconds, 3), "docs_per_s": round(count / seconds),
        "first_doc_s": round(first_s or seconds, 3), "hinted_id": hinted,
    }  # fmt: skip


# ---------------------------------------------------------------- measuring helpers


def ranks_ms(latencies_s: list[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99/max in ms; math.inf entries stand for pushes that never arrived."""
    ordered = sorted(latencies_s)
    if not ordered:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 1)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": rank(1.0)}


def log_marks(logs: list[Path]) -> dict[Path, int]:
    """Where each log ends now: log_events(…, since=marks) reads only what a phase wrote."""
    return {log: log.stat().st_size for log in logs if log.exists()}


def log_lines(logs: list[Path], since: dict[Path, int] | None = None) -> Iterator[str]:
    for log in logs:
        with log.open("rb") as handle:
            handle.seek((since or {}).get(log, 0))
            yield from handle.read().decode(errors="replace").splitlines()


def log_events(logs: list[Path], since: dict[Path, int] | None = None) -> dict[str, Any]:
    """Worker log lines (level warning and up) by event, with one sample each."""
    events: Counter[str] = Counter()
    samples: dict[str, str] = {}
    if logs:
        for line in log_lines(logs, since):
            try:
                event = str(json.loads(line).get("event"))
            except (ValueError, AttributeError):
                event = "(not JSON)"
            events[event] += 1
            samples.setdefault(event, line[:400])
    return {"counts": dict(events), "samples": samples}


# ---------------------------------------------------------------- profiling (optional)


PROFILE_GROUPS = {"workers": ("pushgw/", "workers/"), "secantus": ("secantus/",)}
Profiles = dict[str, list[tuple[Path, float]]]


def start_profilers(stack: Stack, directory: Path | None, label: str) -> Profiles:
    """py-spy (raw stacks, non-blocking) on each worker and on SecantusDB until stop_profilers."""
    if directory is None or stack.mongo is None:
        return {}
    targets = {"workers": stack.workers, "secantus": [stack.mongo]}
    profiles: Profiles = {group: [] for group in targets}
    for group, processes in targets.items():
        for n, process in enumerate(processes, 1):
            name = f"{label}-{group}{n}"
            profiles[group].append((directory / f"{name}.txt", time.monotonic()))
            stack.profilers.append(
                spawn(py_spy_args(process.pid, directory / f"{name}.txt"), stack.tmp / f"{name}.log")
            )
    say(f"py-spy recording the workers and SecantusDB into {directory}")
    return profiles


def py_spy_args(pid: int, output: Path) -> list[str]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [py_spy, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE_HZ), "--nonblocking",
            "--nolineno", "--format", "raw", "--duration", "3600", "--output", str(output)]  # fmt: skip


def stop_profilers(stack: Stack, profiles: Profiles) -> dict[str, Any] | None:
    if not profiles:
        return None
    for profiler in stack.profilers:
        stop_process(profiler, STOP_TIMEOUT_S, signal.SIGINT)  # py-spy writes its file on Ctrl-C
    stack.profilers.clear()
    now = time.monotonic()
    return {
        group: summarize_profiles([(path, now - started) for path, started in outputs], PROFILE_GROUPS[group])
        for group, outputs in profiles.items()
    }


def summarize_profiles(
    outputs: list[tuple[Path, float]], ours: tuple[str, ...], top: int = 15
) -> dict[str, Any]:
    """One group (both workers, or SecantusDB): busy % per process, shares of the group's samples."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    busy: dict[str, float] = {}
    total = 0
    for path, seconds in outputs:
        samples = read_raw_profile(path, inclusive, leaf, ours) if path.exists() else 0
        busy[path.stem] = round(100 * samples / (PROFILE_RATE_HZ * seconds), 1)
        total += samples

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {name: round(100 * n / total, 1) for name, n in counter.most_common(top)} if total else {}

    return {
        "samples": total,
        "busy_percent_of_one_core": busy,
        "inclusive_percent": shares(inclusive),
        "self_by_function_percent": shares(leaf),
    }


def read_raw_profile(path: Path, inclusive: Counter[str], leaf: Counter[str], ours: tuple[str, ...]) -> int:
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples, frames = int(count), [short_frame(frame) for frame in stack.split(";")]
        total += samples
        leaf[frames[-1]] += samples
        for frame in set(frames):
            if frame.startswith(ours) and not frame.startswith("pushgw/cli.py"):
                inclusive[frame] += samples
    return total


def short_frame(frame: str) -> str:
    """`plan_push (workers/planner.py)` → `workers/planner.py:plan_push`; site-packages paths shortened."""
    function, _, where = frame.partition(" (")
    where = where.removesuffix(")").split("site-packages/")[-1].removeprefix(f"{REPO}/")
    return "uvloop (C event loop, sockets, callbacks)" if function == "Runner.run" else f"{where}:{function}"


# ---------------------------------------------------------------- fan-out


def retries(stack: Stack, push_id: str) -> int:
    """`unit_retry` lines the workers logged for this push (timeouts, broker errors, …)."""
    return sum('"unit_retry"' in line and push_id in line for line in log_lines(stack.worker_logs))


@dataclass
class Timeline:
    """When the polls first saw the planner's first checkpoint (first batch published) and its end."""

    origin: float = field(default_factory=time.perf_counter)
    first_batch_s: float | None = None
    planned_s: float | None = None

    def see(self, state: Document, seen: float) -> None:
        plan = state.get("pushgw", {}).get("plans", {}).get("all", {})
        if self.first_batch_s is None and plan.get("next_index", 0) >= 1:
            self.first_batch_s = round(seen - self.origin, 3)
        if self.planned_s is None and plan.get("done"):
            self.planned_s = round(seen - self.origin, 3)


STATUS_FIELDS = {
    "status": 1, "numSent": 1, "numFailed": 1, "errorMessage": 1, "pushgw.progress_at": 1,
    "pushgw.plans.all.next_index": 1, "pushgw.plans.all.done": 1,
}  # fmt: skip


def poll_interval(state: Document, size: int | None) -> float:
    """FANOUT_POLL_S; for a fan-out of `size` devices, FANOUT_SLOW_POLL_S while less than 90 % are counted
    and FANOUT_FAST_POLL_S after: the bench's reads are commands the database serves between the planner's
    getMores (half of them at 100,000 devices with a fixed 50 ms), and only the end needs a fine clock."""
    if size is None:
        return FANOUT_POLL_S
    counted = (state.get("numSent") or 0) + (state.get("numFailed") or 0)
    return FANOUT_SLOW_POLL_S if counted < 0.9 * size else FANOUT_FAST_POLL_S


async def wait_final(
    stack: Stack, push_id: str, deadline_s: float, timeline: Timeline | None = None, size: int | None = None
) -> tuple[Document | None, float, str]:
    """Poll `_PushStatus` until final (`poll_interval`); (document, perf time seen, why it stopped)."""
    status, timeline = stack.db.get_collection(STATUS), timeline or Timeline()
    deadline, noted = time.monotonic() + deadline_s, time.monotonic()
    while True:
        document = await status.find_one({"_id": push_id}, STATUS_FIELDS)
        seen, state = time.perf_counter(), document or {}
        timeline.see(state, seen)
        if state.get("status") in TERMINAL:
            return document, seen, "final"
        if time.monotonic() > deadline:
            return document, seen, f"not final after the {deadline_s:.0f} s deadline"
        stack.check_alive()
        if time.monotonic() - noted >= PROGRESS_EVERY_S:
            noted = time.monotonic()
            say(f"  … {push_id}: {state.get('status')}, numSent {state.get('numSent', 0):,}")
            if retries(stack, push_id) >= GIVE_UP_RETRIES:
                return document, seen, f"gave up: the workers retried it {GIVE_UP_RETRIES}+ times (see log)"
        await asyncio.sleep(poll_interval(state, size))


async def probe(stack: Stack) -> None:
    """An empty-audience push through intake → queue → a worker → final: the pipeline works end to end."""
    connection = HttpConnection(stack.http_port)
    try:
        push_id = await post_push(connection, PROBE_BODY)
    finally:
        await connection.close()
    document, _, _ = await wait_final(stack, push_id, PROBE_TIMEOUT_S)
    if (document or {}).get("status") != "succeeded":
        raise BenchError(f"probe push {push_id} did not succeed: {document}\n{log_events(stack.worker_logs)}")


async def push_and_wait(stack: Stack, size: int, deadline_s: float) -> dict[str, Any]:
    stack.check_alive()
    connection = HttpConnection(stack.http_port)
    posted = time.perf_counter()
    try:
        push_id = await post_push(connection, FANOUT_BODY)
    finally:
        await connection.close()
    accepted, accepted_wall = time.perf_counter(), datetime.now(UTC)
    timeline = Timeline(accepted)
    document, seen, ended = await wait_final(stack, push_id, deadline_s, timeline, size)
    document = document or {}
    progress_at = document.get("pushgw", {}).get("progress_at")
    seconds = seen - accepted
    return {
        "push_id": push_id,
        "ended": ended,
        "status": document.get("status"),
        "num_sent": document.get("numSent"),
        "num_failed": document.get("numFailed", 0),
        "error": document.get("errorMessage"),
        "post_ms": round((accepted - posted) * 1000, 1),
        "seconds": round(seconds, 3),
        "worker_clock_seconds": round((progress_at - accepted_wall).total_seconds(), 3)
        if progress_at
        else None,
        "devices_per_s": round((document.get("numSent") or 0) / seconds),
        "first_batch_s": timeline.first_batch_s,
        "planner_done_s": timeline.planned_s,
    }


async def fanout_run(stack: Stack, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """`--repeats` pushes to the same `size` installations, each between two drains of the planner's cursor
    (drain, push, drain, push, …, drain): the run's push is the median one, its ceiling the median drain.
    The database's own scan time moves by ±20 % from one drain to the next on the shared VM (docs/benchmarks.md),
    more than what is measured; medians of interleaved samples are read alike for both sides, and every
    push is also printed against the better of its two neighbouring drains (`strict_percent`)."""
    seeding = await top_up(stack, size)
    mongo_filter = await planner_filter(stack.db, FANOUT_BODY)
    say(f"ceiling: draining the planner's cursor for {size:,} installations")
    drains = [await drain(stack.db, mongo_filter, stack.installation_indexes)]
    say(f"  {drains[0]['docs_per_s']:,} docs/s")
    pushes: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):
        say(f"push {repeat} of {args.repeats} to {size:,} devices")
        push = await measured_push(stack, size, args, profiled=repeat == 1)
        say(f"  {push['status']} after {push['seconds']:.2f} s ({push['devices_per_s']:,} devices/s)")
        drains.append(await drain(stack.db, mongo_filter, stack.installation_indexes))
        better = max(drains[-2]["docs_per_s"], drains[-1]["docs_per_s"])
        push["strict_percent"] = round(100 * push["devices_per_s"] / better, 1)
        say(
            f"  drain: {drains[-1]['docs_per_s']:,} docs/s; this push = {push['strict_percent']} % of the better drain"
        )
        pushes.append(push)
        if push["status"] not in TERMINAL:
            break  # abandoned: the workers were restarted, the run is not verified
    middle = {key: value for key, value in lower_median(pushes, "seconds").items() if key != "profile"}
    ceiling = round(statistics.median(drain["docs_per_s"] for drain in drains))
    typical = lower_median(drains, "seconds")
    logs = [push["worker_log"] for push in pushes]
    return {
        "size": size, "seeding": seeding, "filter": mongo_filter, **middle,
        "worker_log": {
            "counts": dict(sum((Counter(log["counts"]) for log in logs), Counter())),
            "samples": {event: line for log in logs for event, line in log["samples"].items()},
        },
        **({"profile": pushes[0]["profile"]} if "profile" in pushes[0] else {}),
        "pushes": [{key: push[key] for key in PUSH_SUMMARY} for push in pushes], "drains": drains,
        "typical_drain": typical, "ceiling_docs_per_s": ceiling,
        "share_percent": round(100 * middle["devices_per_s"] / ceiling, 1),
        "verified": len(pushes) == args.repeats and all(
            push["status"] == "succeeded" and push["num_sent"] == size and not push["num_failed"]
            for push in pushes
        ),
    }  # fmt: skip


def lower_median(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run of median `key` (the lower of the two middle ones when there is an even number)."""
    return sorted(runs, key=lambda run: run[key])[(len(runs) - 1) // 2]


PUSH_SUMMARY = (
    "push_id",
    "status",
    "seconds",
    "devices_per_s",
    "first_batch_s",
    "planner_done_s",
    "strict_percent",
)


async def measured_push(
    stack: Stack, size: int, args: argparse.Namespace, *, profiled: bool
) -> dict[str, Any]:
    """One push to all `size` installations with its CPU, database commands, worker log (and profile)."""
    deadline_s = args.fanout_deadline or 60 + size / 1000
    profiles = start_profilers(stack, args.profile if profiled else None, f"fanout{size}")
    meter, marks = CpuMeter(stack.pids()), log_marks(stack.worker_logs)
    ops_before = await opcounters(stack)
    push = await push_and_wait(stack, size, deadline_s)
    push["cpu_percent_of_one_core"], push["worker_log"] = (
        meter.percent(),
        log_events(stack.worker_logs, marks),
    )
    ops_after = await opcounters(stack)
    push["db_commands"] = {name: ops_after[name] - ops_before.get(name, 0) for name in ops_after}
    profile = await asyncio.to_thread(stop_profilers, stack, profiles)
    if profile is not None:
        push["profile"] = profile
    if push["status"] not in TERMINAL:
        await abandon(stack, push)
        await start_workers(stack, "none")
    return push


async def abandon(stack: Stack, push: dict[str, Any]) -> None:
    """Stop the workers, then fail the push (as `pushgw push cancel` would), so nobody replans it later."""
    say(f"!!! {push['push_id']} {push['ended']}; stopping the workers and failing the push")
    await stop_workers(stack)
    reason = f"bench: {push['ended']}"
    await fail_push(stack.db.get_collection(STATUS), push["push_id"], INTERNAL_SERVER_ERROR, reason)


# ---------------------------------------------------------------- transactional


def user_push(index: int) -> dict[str, Any]:
    pointer = {"__type": "Pointer", "className": "_User", "objectId": user_key(index)}
    return {"where": {"user": pointer}, "data": {"alert": "hi"}}


@dataclass
class TxLoad:
    """Client side of the transactional run: accept wall time per push id, HTTP latencies, failures."""

    accepted: dict[str, float] = field(default_factory=dict)
    http_s: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    unsent: int = 0  # not sent: the sending window (--tx-deadline) was over

    def fail(self, kind: str, detail: str) -> None:
        self.failures[kind] += 1
        self.samples.setdefault(kind, detail[:300])


async def tx_client(port: int, bodies: Iterator[tuple[float, bytes]], load: TxLoad, deadline: float) -> None:
    """One keep-alive connection taking pushes from the shared iterator until it is empty or time is up;
    each is sent no earlier than its due time (monotonic clock; 0: at once)."""
    connection = HttpConnection(port)
    try:
        for due, body in bodies:
            if time.monotonic() > deadline:
                load.unsent += 1
                continue
            if (wait_s := due - time.monotonic()) > 0:
                await asyncio.sleep(wait_s)  # pacing an open-loop load, not waiting for a result
            started = time.perf_counter()
            try:
                status, headers, answer = await connection.request("POST", "/parse/push", body)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
                load.fail(type(error).__name__, str(error))
                continue
            push_id = headers.get(b"x-parse-push-status-id")
            if status != 200 or push_id is None:
                load.fail(f"HTTP {status}", answer.decode(errors="replace"))
                continue
            load.accepted[push_id.decode()] = time.time()
            load.http_s.append(time.perf_counter() - started)
    finally:
        await connection.close()


async def send_transactional(
    port: int, indices: list[int], concurrency: int, window_s: float, rate: float
) -> TxLoad:
    """POST one push per index from `concurrency` clients: as fast as the intake answers (`rate` 0), or
    push k due at start + k / `rate` (an open-loop load at that rate, as long as the clients keep up)."""
    begin = time.monotonic()
    schedule = [begin + k / rate if rate else 0.0 for k in range(len(indices))]
    load = TxLoad()
    bodies = iter(list(zip(schedule, [push_body(user_push(index)) for index in indices], strict=True)))
    started, deadline = time.perf_counter(), begin + window_s
    await asyncio.gather(*(tx_client(port, bodies, load, deadline) for _ in range(concurrency)))
    load.elapsed_s = time.perf_counter() - started
    return load


async def final_count(stack: Stack) -> int:
    """Final `_PushStatus` documents. Deliberately no `_id: {$in: …}`: SecantusDB matches such a list
    document by document in Python, and a poll that costly would compete with the pushes it observes."""
    return await stack.db.get_collection(STATUS).count_documents({"status": {"$in": list(TERMINAL)}})


async def wait_all_final(stack: Stack, ids: list[str], baseline: int, deadline_s: float) -> int:
    """Poll until the pushes of `ids` are final: final documents beyond the `baseline` counted before."""
    deadline, noted = time.monotonic() + deadline_s, time.monotonic()
    while True:
        done = await final_count(stack) - baseline
        if done >= len(ids) or time.monotonic() > deadline:
            return done
        stack.check_alive()
        if time.monotonic() - noted >= PROGRESS_EVERY_S:
            noted = time.monotonic()
            say(f"  … {done:,} of {len(ids):,} pushes final")
        await asyncio.sleep(TX_POLL_S)


def first_deliveries(journal: Path, ids: list[str]) -> dict[str, float]:
    """push id → the earliest delivery in the recording provider's journal (worker clock, epoch s)."""
    wanted, firsts = set(ids), {}
    with contextlib.suppress(FileNotFoundError), journal.open() as lines:
        for line in lines:
            row = json.loads(line)
            if row["push_id"] in wanted:
                firsts[row["push_id"]] = min(firsts.get(row["push_id"], row["at"]), row["at"])
    return firsts


async def final_states(db: AsyncDatabase[Document], ids: list[str]) -> Counter[str]:
    states: Counter[str] = Counter()
    rows = db.get_collection(STATUS).find({"_id": {"$in": ids}}, {"status": 1, "numSent": 1})
    async for row in rows:
        sent_one = row.get("status") == "succeeded" and row.get("numSent") == 1
        states[
            "succeeded, numSent 1" if sent_one else f"{row.get('status')}, numSent {row.get('numSent')}"
        ] += 1
    return states


async def single_user_cost(stack: Stack, indices: list[int]) -> dict[str, Any]:
    """The planner's query for one user, drained with nothing else running: the DB cost of one push.

    For reference, the same user read as `{_p_user: …}` sorted on `_id` with no hint and no reachability
    `$or`, which SecantusDB answers from the `_p_user` index: what the database could do per push.
    """
    db, indexes = stack.db, stack.installation_indexes
    runs = [await drain(db, await planner_filter(db, user_push(index)), indexes) for index in indices]
    seconds = statistics.median(run["seconds"] for run in runs)
    indexed = [await indexed_user_read(db, index) for index in indices]
    indexed_s = statistics.median(indexed)
    return {
        "samples": len(runs), "median_ms": round(seconds * 1000, 1), "hinted_id": runs[0]["hinted_id"],
        "docs_returned": [run["docs"] for run in runs],
        "pushes_per_s_ceiling": round(1 / seconds, 1) if seconds else None,
        "indexed_read_median_ms": round(indexed_s * 1000, 2),
        "indexed_reads_per_s": round(1 / indexed_s) if indexed_s else None,
    }  # fmt: skip


async def indexed_user_read(db: AsyncDatabase[Document], index: int) -> float:
    started = time.perf_counter()
    query = {"_p_user": f"_User${user_key(index)}"}
    cursor = db.get_collection(INSTALLATIONS).find(query, PROJECTION).sort("_id", 1)
    if len(await cursor.to_list()) != 1:
        raise BenchError(f"user {user_key(index)} does not have exactly one installation")
    return time.perf_counter() - started


def tx_users(population: int, count: int) -> list[int]:
    """`count` distinct installations spread evenly over the collection."""
    return [k * population // count for k in range(count)]


async def transactional_run(stack: Stack, args: argparse.Namespace, rate: float = 0.0) -> dict[str, Any]:
    """`args.transactional` single-user pushes, as fast as the intake accepts them (`rate` 0) or paced."""
    seeding = await top_up(stack, max(stack.seeded, args.tx_installations or max(args.sizes)))
    indices = tx_users(stack.seeded, min(args.transactional, stack.seeded))
    await seed_users(stack, indices)
    say("restarting the workers with the recording provider's journal (store = file)")
    await stop_workers(stack)
    await start_workers(stack, "file")
    say(f"per-push DB cost: draining the planner's single-user cursor over {stack.seeded:,} installations")
    cost = await single_user_cost(stack, indices[: 3 if stack.seeded <= 50_000 else 1])
    cost["indexes"] = sorted([index["name"] async for index in await stack.db[INSTALLATIONS].list_indexes()])
    say(
        f"  {cost['median_ms']:.0f} ms per single-user query → ≤ {cost['pushes_per_s_ceiling']} pushes/s "
        f"(indexed read without hint/$or: {cost['indexed_read_median_ms']} ms)"
    )
    pace = f"paced at {rate:g}/s" if rate else "as fast as the intake accepts them"
    clients = args.tx_paced_concurrency if rate else args.tx_concurrency
    say(f"sending {len(indices):,} single-user pushes, {clients} clients, {pace}")
    baseline = await final_count(stack)
    profiles = start_profilers(stack, args.profile, "transactional")
    meter, marks = CpuMeter(stack.pids()), log_marks(stack.worker_logs)
    ops_before, db_cpu_before = await opcounters(stack), cpu_seconds(stack.pids()["secantus"])
    load = await send_transactional(stack.http_port, indices, clients, args.tx_deadline, rate)
    say(
        f"  {len(load.accepted):,} accepted in {load.elapsed_s:.1f} s ({load.unsent:,} not sent: window over)"
    )
    ids = list(load.accepted)
    final = await wait_all_final(stack, ids, baseline, args.tx_deadline)
    cpu = meter.percent()
    db_work = db_work_per_push(
        ops_before, await opcounters(stack), cpu_seconds(stack.pids()["secantus"]) - db_cpu_before, len(ids)
    )
    profile = await asyncio.to_thread(stop_profilers, stack, profiles)
    if final < len(ids):
        say(f"!!! {len(ids) - final:,} pushes not final after {args.tx_deadline:.0f} s")
    return await tx_result(stack, load, ids, final) | {
        "population": stack.seeded, "seeding": seeding, "single_user_query": cost, "unsent": load.unsent,
        "concurrency": clients, "offered_rate": rate, "cpu_percent_of_one_core": cpu, "db_work": db_work,
        "worker_log": log_events(stack.worker_logs, marks),
    } | ({"profile": profile} if profile else {})  # fmt: skip


async def opcounters(stack: Stack) -> dict[str, int]:
    """SecantusDB's `serverStatus.opcounters` (every command any process sent it)."""
    status = await stack.db.client.admin.command("serverStatus")
    return {name: int(count) for name, count in status.get("opcounters", {}).items()}


def db_work_per_push(
    before: dict[str, int], after: dict[str, int], cpu_s: float, pushes: int
) -> dict[str, Any]:
    """Database commands and SecantusDB CPU per single-user push (the bench's own polls included, ~1/s),
    and the push rate SecantusDB could sustain at that cost with one core fully busy: the DB-bound ceiling."""
    if not pushes:
        return {}
    ops = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    cpu_ms = 1000 * cpu_s / pushes
    return {
        "ops_per_push": round(sum(ops.values()) / pushes, 1),
        "ops": {name: round(count / pushes, 2) for name, count in ops.items() if count},
        "db_cpu_ms_per_push": round(cpu_ms, 2),
        "db_bound_pushes_per_s": round(1000 / cpu_ms, 1) if cpu_ms else math.inf,
    }


async def tx_result(stack: Stack, load: TxLoad, ids: list[str], final: int) -> dict[str, Any]:
    firsts = first_deliveries(stack.tmp / RECORDED_FILE, ids)
    latencies = [firsts[push_id] - load.accepted[push_id] for push_id in ids if push_id in firsts]
    missing = len(ids) - len(latencies)
    span = max(firsts.values()) - min(load.accepted.values()) if firsts else math.nan
    return {
        "pushes": len(ids) + sum(load.failures.values()) + load.unsent,
        "accepted": len(ids),
        "accepted_per_s": round(len(ids) / load.elapsed_s, 1) if load.elapsed_s else 0.0,
        "intake_latency_ms": ranks_ms(load.http_s),
        "failures": dict(load.failures),
        "failure_samples": load.samples,
        "final": final,
        "delivered": len(latencies),
        "completed_per_s": round(len(latencies) / span, 1) if firsts and span > 0 else 0.0,
        "completion_span_s": round(span, 2) if firsts else None,
        "latency_ms_delivered": ranks_ms(latencies),
        "latency_ms_all": ranks_ms(latencies + [math.inf] * missing),
        "final_states": dict(await final_states(stack.db, ids)),
    }


# ---------------------------------------------------------------- report


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    runs = results.get("fanout", [])
    for run in runs:
        rows.append({
            "name": f"fan-out {run['size']:,}: devices/s ≥ 80 % of DB ceiling", "value": f"{run['share_percent']} %",
            "pass": run["verified"] and run["share_percent"] >= 100 * TARGET_SHARE,
        })  # fmt: skip
    for small, large in itertools.pairwise(runs):
        limit = TARGET_GROWTH_SLACK * large["size"] / small["size"]
        growth = large["seconds"] / small["seconds"] if small["seconds"] else math.inf
        rows.append({
            "name": f"linear: t({large['size']:,}) ≤ {limit:.2f} × t({small['size']:,})",
            "value": f"{growth:.2f} ×", "pass": large["verified"] and small["verified"] and growth <= limit,
        })  # fmt: skip
    tx = results.get("transactional")
    if tx:
        rows.append(
            {
                "name": f"transactional ≥ {TARGET_TX_RATE:g} pushes/s (completed, at the intake's pace)",
                "value": f"{tx['completed_per_s']}/s",
                "pass": tx["completed_per_s"] >= TARGET_TX_RATE,
            }
        )
    # The latency target holds at the target rate: from the paced run when there is one (a fleet that falls
    # behind the offered rate shows it as growing latency). A run offered more than the fleet completes
    # measures its queue instead (its p99 is printed with it).
    measured = results.get("transactional_paced") or tx
    if measured:
        p99, offered = measured["latency_ms_all"]["p99"], measured["offered_rate"]
        at = f"at {offered:g}/s offered" if offered else "at the intake's pace"
        rows.append({"name": f"transactional p99 accept→provider ≤ {TARGET_TX_P99_MS:g} ms ({at})",
                     "value": f"{p99} ms", "pass": p99 <= TARGET_TX_P99_MS})  # fmt: skip
    return rows


def cpu_text(cpu: dict[str, float]) -> str:
    parts = "  ".join(f"{name} {value:.0f}" for name, value in cpu.items() if name != "machine")
    text = f"    cpu, % of one core: {parts}  (machine {cpu['machine']:.0f} of {100 * (os.cpu_count() or 1)})"
    if cpu.get("foreign", 0.0) > FOREIGN_CPU_WARNING:
        text += f"\n    !!! other processes used {cpu['foreign']:.0f} % of a core: this phase is disturbed"
    return text


def log_text(log: dict[str, Any]) -> str:
    if not log["counts"]:
        return "    worker log (warning and up): empty"
    lines = [f"    !!! worker log: {count} × {event}" for event, count in log["counts"].items()]
    lines += [f"        sample {event}: {sample}" for event, sample in log["samples"].items()]
    return "\n".join(lines)


def print_fanout(run: dict[str, Any]) -> None:
    typical, count = run["typical_drain"], len(run["pushes"])
    print(
        f"fan-out {run['size']:>9,}  {run['status']}  {run['seconds']:.2f} s (median of {count} pushes; worker clock "
        f"{run['worker_clock_seconds']} s)  {run['devices_per_s']:,} devices/s  numSent {run['num_sent']}"
        f"  numFailed {run['num_failed']}  {'OK' if run['verified'] else '!!!!! NOT VERIFIED !!!!!'}"
    )
    drains = ", ".join(f"{drain['docs_per_s']:,} ({drain['seconds']:.2f} s)" for drain in run["drains"])
    print(
        f"    DB ceiling (same cursor, drained before, between and after the pushes): {drains} docs/s "
        f"→ median {run['ceiling_docs_per_s']:,} docs/s → fan-out = {run['share_percent']} % of it"
    )
    for number, push in enumerate(run["pushes"], 1):
        print(
            f"    push {number}: {push['status']} {push['seconds']:.2f} s, {push['devices_per_s']:,} devices/s, "
            f"first batch {push['first_batch_s']} s, planner done {push['planner_done_s']} s → "
            f"{push['strict_percent']} % of the better of its two drains"
        )
    print(
        f"    timeline of the median push (polls every {FANOUT_SLOW_POLL_S} s until 90 % counted, then {FANOUT_FAST_POLL_S} s; from the 200): first batch published {run['first_batch_s']} s, planner done "
        f"{run['planner_done_s']} s, {run['status']} {run['seconds']} s  |  median drain: first doc "
        f"{typical['first_doc_s']} s, drained {typical['seconds']} s"
    )
    commands = ", ".join(f"{name} {count:,}" for name, count in run["db_commands"].items() if count)
    print(f"    SecantusDB commands during the push (the bench's polls included): {commands}")
    if run["seeding"]["inserted"]:
        print(
            f"    seeding: {run['seeding']['inserted']:,} inserted at {run['seeding']['docs_per_s']:,} docs/s"
        )
    if run["ended"] != "final":
        print(f"    !!!!! {run['ended']}; the bench failed the push afterwards !!!!!")
    print(cpu_text(run["cpu_percent_of_one_core"]))
    print(log_text(run["worker_log"]))
    if "profile" in run:
        print_profile(run["profile"])


def print_profile(profile: dict[str, Any]) -> None:
    for group, part in profile.items():
        busy = ", ".join(f"{name} {value} %" for name, value in part["busy_percent_of_one_core"].items())
        print(f"    profile {group}: {part['samples']} samples; busy (% of one core): {busy}")
        for title, key in (("inclusive", "inclusive_percent"), ("self", "self_by_function_percent")):
            for frame, share in part[key].items():
                print(f"      {title:<9} {share:5.1f} %  {frame}")


def print_transactional(tx: dict[str, Any]) -> None:
    cost = tx["single_user_query"]
    pace = f"paced at {tx['offered_rate']:g}/s" if tx["offered_rate"] else "at the intake's pace"
    print(
        f"transactional ({pace})  {tx['accepted']:,} of {tx['pushes']:,} accepted at {tx['accepted_per_s']}/s "
        f"(intake latency {latency_text(tx['intake_latency_ms'])}), {tx['concurrency']} clients, "
        f"{tx['population']:,} installations"
    )
    print(
        f"    failures: {tx['failures'] or 'none'} {tx['failure_samples'] or ''}; not sent (window over): {tx['unsent']}"
    )
    print(
        f"    delivered {tx['delivered']:,}, final {tx['final']:,}, completed {tx['completed_per_s']}/s "
        f"over {tx['completion_span_s']} s; states {tx['final_states']}"
    )
    print(f"    accept→provider, delivered pushes:      {latency_text(tx['latency_ms_delivered'])}")
    print(f"    accept→provider, all (undelivered = ∞): {latency_text(tx['latency_ms_all'])}")
    form = "sort _id, hint _id_" if cost["hinted_id"] else "sort _id, no hint: pins an indexed field"
    print(
        f"    DB cost of one single-user planner query ({form}): {cost['median_ms']} ms median "
        f"of {cost['samples']} → ≤ {cost['pushes_per_s_ceiling']} pushes/s on this database"
    )
    print(
        f"    reference: {{_p_user: …}} alone, sorted on _id, no hint, no reachability $or: "
        f"{cost['indexed_read_median_ms']} ms → ≤ {cost['indexed_reads_per_s']} reads/s; "
        f"_Installation indexes: {', '.join(cost['indexes'])}"
    )
    work = tx["db_work"]
    if work:
        share = (
            100 * tx["completed_per_s"] / work["db_bound_pushes_per_s"]
            if work["db_bound_pushes_per_s"]
            else 0
        )
        print(
            f"    DB work per push: {work['ops_per_push']} commands {work['ops']}, SecantusDB CPU "
            f"{work['db_cpu_ms_per_push']} ms → DB-bound ceiling {work['db_bound_pushes_per_s']} pushes/s "
            f"(completed = {share:.0f} % of it)"
        )
    print(cpu_text(tx["cpu_percent_of_one_core"]))
    print(log_text(tx["worker_log"]))
    if "profile" in tx:
        print_profile(tx["profile"])


def print_report(results: dict[str, Any]) -> None:
    config = results["config"]
    print(f"\npushgw fan-out bench  (queue prefix {config['queue_prefix']}, 2 workers, recording provider)")
    if not results["complete"]:
        print(
            "  !!!!! PARTIAL: the run was interrupted or failed; only the phases that ended are shown !!!!!"
        )
    print(f"  note: {config['note']}")
    print(
        f"  machine busy before start: {config['machine_busy_before_start_percent']:.0f} % of one core; "
        f"pushgw mongo.timeout_ms: {config['mongo_timeout_ms']}"
    )
    speed = config["machine_speed_us"]
    print(
        f"  machine speed (BSON decode + to_device of one installation row, one core, lower is faster): "
        f"{speed['before']:.2f} µs before, {speed['after']:.2f} µs after"
    )
    for run in results.get("fanout", []):
        print_fanout(run)
    for name in ("transactional", "transactional_paced"):
        if results.get(name):
            print_transactional(results[name])
    for row in results["targets"]:
        print(f"target  {'PASS' if row['pass'] else 'MISS'}  {row['name']}  ({row['value']})")
    print(f"summary {results['summary']}")


def summary(results: dict[str, Any]) -> str:
    rows = results["targets"]
    passed = sum(row["pass"] for row in rows)
    parts = [f"{run['size']:,}: {run['seconds']:.1f} s, {run['share_percent']} % of ceiling"
             for run in results.get("fanout", [])]  # fmt: skip
    for name, label in (("transactional", "tx"), ("transactional_paced", "tx paced")):
        if tx := results.get(name):
            parts.append(f"{label}: {tx['completed_per_s']}/s, p99 {tx['latency_ms_all']['p99']} ms")
    return f"{passed}/{len(rows)} targets met; " + "; ".join(parts)


# ---------------------------------------------------------------- main


async def run(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Every phase in order; `results` fills as phases end, so an interrupted run still reports them."""
    say(f"starting SecantusDB (storage {stack.tmp / 'mongo'})")
    await start_secantus(stack)
    await seed_schema(stack.db)
    say(f"starting pushgw serve and 2 workers (queue prefix {stack.prefix})")
    await start_gateway(stack)
    await start_workers(stack, "none")
    await probe(stack)
    for size in [] if args.skip_fanout else args.sizes:
        results["fanout"].append(await fanout_run(stack, size, args))
    if args.transactional:
        results["transactional"] = await transactional_run(stack, args)
        if args.tx_rate:
            results["transactional_paced"] = await transactional_run(stack, args, args.tx_rate)


async def run_cancellable(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """`run`, with SIGTERM cancelling it like asyncio.Runner does for Ctrl-C (so teardown runs once)."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await run(stack, args, results)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def machine_speed_us() -> float:
    """This VM's speed right now: decode one stored installation and convert it (the planner's step per row
    until units carried raw rows, now the sender's; the same row since the line was added, `_updated_at`
    included, so its numbers compare across versions), the best of 5 × 20,000. Runs of the same code on this
    2-core VM differ by up to 2× with it; compare runs with it in mind."""
    row = bson.encode({
        "_id": "I000000001", "deviceType": "ios", "deviceToken": "a" * 64, "badge": 3, "localeIdentifier": "en-US",
        "appIdentifier": "com.example.app", "timeZone": "Europe/Paris", "installationId": "x" * 36,
        "_updated_at": datetime.now(UTC),
    })  # fmt: skip
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20_000):
            to_device(bson.decode(row))
        best = min(best, time.perf_counter() - started)
    return best / 20_000 * 1e6


def config_summary(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "sizes": args.sizes, "transactional": args.transactional, "tx_concurrency": args.tx_concurrency,
        "queue_prefix": stack.prefix, "installation_indexes": stack.installation_indexes,
        "send_small_pushes_inline": stack.send_inline, "intake_processes": stack.intake_processes,
        "mongo_timeout_ms": stack.mongo_timeout_ms or "pushgw default (5000)",
        "profile": str(args.profile) if args.profile else None,
        "machine_busy_before_start_percent": args.busy_before_start,
        "note": "one SecantusDB (temp storage, single core) holds _Installation and _PushStatus, as "
        "pushgw needs (the recording provider's deliveries go to a file, not to it); RabbitMQ at 127.0.0.1:5672; pushgw's worker defaults "
        "(batch_size 500, prefetch 16, send_prefetch 32); everything shares the machine's cores; the intake's _PushStatus "
        "inserts queue behind planner scans (no separate database possible: one mongo.uri)"
        + ("; py-spy runs during the push phases (numbers disturbed)" if args.profile else ""),
    }  # fmt: skip


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers, e.g. 100000,200000")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--sizes", type=parse_sizes, default=[100_000, 200_000], help="fan-out sizes (default 100000,200000)")
    add("--million", action="store_true", help="also push to 1,000,000 installations")
    add(
        "--repeats",
        type=int,
        default=3,
        metavar="N",
        help="pushes per fan-out size, each between two drains of the planner's cursor; the run reports the "
        "median push against the median drain (default 3; 1 for a quick look)",
    )
    add(
        "--transactional",
        type=int,
        default=1000,
        metavar="N",
        help="single-user pushes (default 1000, 0: skip)",
    )
    add("--tx-concurrency", type=int, default=16, help="HTTP clients of the transactional run (default 16)")
    add(
        "--tx-paced-concurrency",
        type=int,
        default=64,
        help="HTTP clients of the paced run (default 64: an open-loop load at --tx-rate needs rate × the "
        "intake's latency of them in flight, and 16 clients at ~40 ms offer only ~400/s)",
    )
    add(
        "--intake-processes",
        type=int,
        default=1,
        metavar="N",
        help="pushgw serve's http.processes (default 1; one intake process accepts ~450-950 pushes/s here)",
    )
    add(
        "--tx-rate",
        type=float,
        default=TARGET_TX_RATE,
        help="after the run at the intake's pace, the same pushes again paced at this rate (pushes/s), where "
        f"the latency target is judged; 0: no paced run (default {TARGET_TX_RATE:g})",
    )
    add(
        "--tx-installations",
        type=int,
        default=0,
        metavar="N",
        help="installations in the collection for the transactional run (default: the largest size)",
    )
    add(
        "--tx-deadline",
        type=float,
        default=300.0,
        metavar="S",
        help="stop sending after S s, then wait at most S s for the sent pushes to become final (default 300)",
    )
    add(
        "--no-user-index",
        action="store_true",
        help="run pushgw with worker.installation_indexes = [] (default: pushgw's, _p_user and installationId)",
    )
    add(
        "--queued-small-pushes",
        action="store_true",
        help="run pushgw with worker.send_small_pushes_inline = false (the baseline for one-batch pushes)",
    )
    add(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="copy the processes' logs to DIR before deleting the temp dir",
    )
    add("--fanout-deadline", type=float, default=0.0, metavar="S", help="per push (default 60 + size/1000)")
    add("--skip-fanout", action="store_true", help="only the transactional run")
    add(
        "--mongo-timeout-ms",
        type=int,
        default=0,
        metavar="MS",
        help="pushgw's mongo.timeout_ms (default: unset)",
    )
    add("--profile", type=Path, metavar="DIR", help="py-spy workers and SecantusDB during each push phase")
    add("--wait-quiet", type=float, default=0.0, metavar="S", help="first wait up to S s for an idle machine")
    add("--json", action="store_true", help="end with one JSON object holding every number")
    args = parser.parse_args(argv)
    if args.million:
        args.sizes = sorted({*args.sizes, 1_000_000})
    return args


def run_all(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> int | None:
    """Run, then tear down whatever happened; an exit code if the run did not get to its end."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(run_cancellable(stack, args, results))
        except (KeyboardInterrupt, asyncio.CancelledError):
            say("interrupted: stopping everything this bench started")
            return 130
        except (BenchError, OSError, PyMongoError, aio_pika.exceptions.AMQPError) as error:
            say(f"FAILED: {type(error).__name__}: {error}")
            for gone in stack.exited():  # a child that died explains most failures
                say(f"  {gone}")
            return 2
        finally:
            say("stopping processes, deleting queues and the temp dir")
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # teardown is bounded; let it finish
            teardown(stack, runner)
            keep_logs(stack.tmp, args.keep_logs, ("*.log", "*.toml"), say)
            shutil.rmtree(stack.tmp, ignore_errors=True)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, raise_interrupt)
    args.busy_before_start = wait_for_quiet(args.wait_quiet, say)
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="pushgw-fanout-")), mongo_timeout_ms=args.mongo_timeout_ms or None
    )
    if args.no_user_index:
        stack.installation_indexes = []
    stack.send_inline = not args.queued_small_pushes
    stack.intake_processes = args.intake_processes
    results: dict[str, Any] = {"config": config_summary(stack, args), "fanout": []}
    speed_before = machine_speed_us()
    stopped = run_all(stack, args, results)
    results["config"]["machine_speed_us"] = {"before": speed_before, "after": machine_speed_us()}
    if stopped is not None and not results["fanout"] and "transactional" not in results:
        return stopped
    results["complete"] = stopped is None
    results["targets"] = targets(results)
    results["summary"] = summary(results)
    print_report(results)
    if args.json:
        print(json.dumps(json_safe(results), separators=(",", ":")))
    if stopped is not None:
        return stopped
    fanout_ok = all(run["verified"] for run in results["fanout"])
    tx_runs = [results[name] for name in ("transactional", "transactional_paced") if results.get(name)]
    tx_ok = all(not tx["failures"] and tx["final"] == tx["accepted"] for tx in tx_runs)
    return 0 if fanout_ok and tx_ok else 1


if __name__ == "__main__":
    sys.exit(main())
