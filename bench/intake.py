"""Intake benchmark: `POST /parse/push` through pushgw, against the ceiling of the two writes it must make.

One run, one process tree:
  1. start a SecantusDB (temp storage) and `pushgw serve` on free loopback ports, unique queue prefix;
  2. warm up, then drive the gateway with N keep-alive HTTP/1.1 clients for `--duration` seconds;
  3. stop the gateway, check that every 200 left one `_PushStatus` document and one `<prefix>.plan` message;
  4. with the same concurrency, same SecantusDB and same RabbitMQ, measure what the writes alone sustain:
     (a) `insert_one` w=majority, (b) confirmed persistent publish to a quorum queue, (c) (a) then (b);
  5. delete the queues and exchanges it declared and stop every process it started, also on Ctrl-C or error.

Run: `.venv/bin/python bench/intake.py [--duration 20] [--concurrency 32] [--json] [--profile FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import uvloop
from aio_pika.abc import AbstractChannel, AbstractExchange
from harness import (
    BenchError,
    CpuMeter,
    free_port,
    latency_text,
    raise_interrupt,
    stop_process,
    tail,
    wait_for_quiet,
)
from pamqp.commands import Basic
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import PyMongoError

from pushgw.messages import PlanPush
from pushgw.mongo import Document, create_client
from pushgw.push import parse_push
from pushgw.push_status import COLLECTION, InsertBatcher, new_object_id, new_status_document
from pushgw.settings import Settings, load_settings
from pushgw.topology import WORK_QUEUES, Topology

REPO = Path(__file__).resolve().parent.parent
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
APP_ID, MASTER_KEY = "bench", "bench-master-key"
GATEWAY_DB, CEILING_DB = "bench", "bench_ceiling"
PUSH: dict[str, Any] = {"channels": ["news"], "data": {"alert": "hi"}}
ACCEPTED_BODY = b'{"result":true}'
CEILING_ROUTE = "ceiling"
CEILING_WARMUP_S = 1.0
TARGET_RATE, TARGET_P99_MS, TARGET_SHARE = 800.0, 50.0, 0.60
PROFILE_RATE_HZ = 100
FOREIGN_CPU_WARNING = 20.0  # % of one core used by processes this bench did not start
START_TIMEOUT_S, STOP_TIMEOUT_S, VERIFY_TIMEOUT_S = 30.0, 30.0, 15.0
Operation = Callable[[], Awaitable[object]]


# ---------------------------------------------------------------- processes


@dataclass
class Stack:
    """What this run started: temp dir, ports, child processes and the queue prefix."""

    tmp: Path
    prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:10]}")
    mongo_port: int = 0
    http_port: int = 0
    processes: int = 1
    mongo: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/?directConnection=true"


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A child in its own session: Ctrl-C reaches only the bench, which then stops children in order."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            raise BenchError(f"{what} exited with code {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready within {START_TIMEOUT_S:.0f} s:\n{tail(log)}")
        time.sleep(0.05)  # poll interval while a child starts


def start_secantus(stack: Stack) -> None:
    stack.mongo_port = free_port()
    storage, log = stack.tmp / "mongo", stack.tmp / "secantus.log"
    storage.mkdir()
    stack.mongo = spawn(
        [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(stack.mongo_port),
         "--storage-path", str(storage), "--log-level", "WARNING"],
        log,
    )  # fmt: skip
    probe: MongoClient[Document] = MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=250)

    def pings() -> bool:
        try:
            probe.admin.command("ping")
        except PyMongoError:
            return False
        return True

    try:
        wait_until(pings, "SecantusDB", stack.mongo, log)
    finally:
        probe.close()


def write_config(stack: Stack) -> Path:
    path = stack.tmp / "pushgw.toml"
    path.write_text(
        f'[mongo]\nuri = "{stack.mongo_uri}"\n\n'
        f'[queue]\nurl = "{RABBIT_URL}"\nprefix = "{stack.prefix}"\n\n'
        f'[http]\nhost = "127.0.0.1"\nport = {stack.http_port}\nprocesses = {stack.processes}\n\n'
        '[log]\nlevel = "warning"\n\n'
        f'[[apps]]\napp_id = "{APP_ID}"\nmaster_key = "{MASTER_KEY}"\nmongo_database = "{GATEWAY_DB}"\n'
    )
    return path


def start_gateway(stack: Stack) -> None:
    stack.http_port = free_port()
    config, log = write_config(stack), stack.tmp / "pushgw.log"
    stack.gateway = spawn([sys.executable, "-m", "pushgw.cli", "serve", "--config", str(config)], log)
    wait_until(lambda: gateway_ready(stack.http_port), "pushgw serve", stack.gateway, log)


def gateway_ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/ready")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def teardown(stack: Stack) -> None:
    stop_process(stack.gateway, STOP_TIMEOUT_S)  # first: a running gateway would declare its topology again
    try:
        asyncio.run(delete_topology(*topology_names(stack)))
    except (OSError, aio_pika.exceptions.AMQPError) as error:
        print(f"WARNING: could not delete queues {stack.prefix}.*: {error}", file=sys.stderr)
    stop_process(stack.mongo, STOP_TIMEOUT_S)


def topology_names(stack: Stack) -> tuple[list[str], list[str]]:
    """Every queue and exchange the gateway declares for our prefix (names from pushgw itself), plus ours."""
    config = stack.tmp / "pushgw.toml"
    settings = load_settings(config) if config.exists() else Settings()
    tiers = tuple(settings.worker.delay_tiers_s)
    topology = Topology(stack.prefix, delivery_limit=settings.queue.delivery_limit, delay_tiers_s=tiers)
    queues = [topology.queue(route) for route in (*WORK_QUEUES, CEILING_ROUTE)]
    queues += [topology.dead_queue, *(topology.delay_queue(tier_s) for tier_s in tiers)]
    return queues, [topology.work_exchange, topology.dead_exchange, topology.delay_exchange]


async def delete_topology(queues: list[str], exchanges: list[str]) -> None:
    connection = await aio_pika.connect(RABBIT_URL, timeout=10)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


# ---------------------------------------------------------------- measuring


@dataclass
class Timing:
    """Latencies (seconds) of the operations that succeeded, and the wall time they took together."""

    latencies: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s else 0.0

    def latency_ms(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        if not ordered:
            return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}

        def rank(q: float) -> float:
            return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 2)

        return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": rank(1.0)}


@dataclass
class Load(Timing):
    """HTTP answers: latencies of correct 200s, everything else counted by kind with a sample."""

    failures: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)

    def fail(self, kind: str, detail: bytes | str) -> None:
        self.failures[kind] += 1
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
        self.samples.setdefault(kind, text[:300])

    def answer(self, status: int, headers: dict[bytes, bytes], body: bytes, seconds: float) -> None:
        if status != 200:
            self.fail(f"HTTP {status}", body)
        elif b"x-parse-push-status-id" not in headers:
            self.fail("200 without X-Parse-Push-Status-Id", body)
        elif body != ACCEPTED_BODY:
            self.fail("200 with another body", body)
        else:
            self.latencies.append(seconds)


# ---------------------------------------------------------------- the HTTP load generator


def push_request(port: int) -> bytes:
    body = json.dumps(PUSH, separators=(",", ":")).encode()
    head = (
        f"POST /parse/push HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"X-Parse-Application-Id: {APP_ID}\r\nX-Parse-Master-Key: {MASTER_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
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


async def http_client(port: int, request: bytes, deadline: float, load: Load) -> None:
    """One keep-alive connection posting pushes back to back until the deadline; reconnects on errors."""
    while time.perf_counter() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as error:
            load.fail(type(error).__name__, str(error))
            continue
        try:
            while (started := time.perf_counter()) < deadline:
                writer.write(request)
                status, headers, body = await read_response(reader)
                load.answer(status, headers, body, time.perf_counter() - started)
                if headers.get(b"connection", b"").lower() == b"close":
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            load.fail(type(error).__name__, str(error))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def run_load(port: int, concurrency: int, duration_s: float) -> Load:
    load, request = Load(), push_request(port)
    started = time.perf_counter()
    deadline = started + duration_s
    await asyncio.gather(*(http_client(port, request, deadline, load) for _ in range(concurrency)))
    load.elapsed_s = time.perf_counter() - started
    return load


async def measure_gateway(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    assert stack.gateway is not None and stack.mongo is not None
    say(f"warm-up {args.warmup:g} s, concurrency {args.concurrency}")
    warmup = await run_load(stack.http_port, args.concurrency, args.warmup)
    say(f"gateway load {args.duration:g} s")
    profiler = start_profiler(args, stack.gateway.pid)
    meter = CpuMeter({"pushgw": stack.gateway.pid, "secantus": stack.mongo.pid, "bench": os.getpid()})
    load = await run_load(stack.http_port, args.concurrency, args.duration)
    cpu = meter.percent()
    result = {
        "accepted": load.count,
        "rate_per_s": round(load.rate, 1),
        "elapsed_s": round(load.elapsed_s, 2),
        "latency_ms": load.latency_ms(),
        "failures": dict(load.failures + warmup.failures),
        "failure_samples": {**warmup.samples, **load.samples},
        "warmup_accepted": warmup.count,
        "cpu_percent_of_one_core": cpu,
    }
    if profiler is not None:
        result["profile"] = await asyncio.to_thread(
            finish_profiler, profiler, Path(args.profile), args.duration
        )
    return result


# ---------------------------------------------------------------- ceiling: the two writes alone


def status_template() -> Document:
    """The `_PushStatus` document pushgw writes for PUSH (Parse's StatusHandler.setInitial shape)."""
    now = datetime.now(UTC)
    return new_status_document("template", parse_push(dict(PUSH), now=now), now=now, scheduled=False)


def plan_body() -> bytes:
    now = datetime.now(UTC)
    push = parse_push(dict(PUSH), now=now)
    item = PlanPush(
        app_id=APP_ID,
        push_id=new_object_id(),
        where=push.where,
        data=push.data,
        options=push.options,
        accepted_at=now,
    )
    return item.to_bytes()


def make_inserts(mongo: AsyncMongoClient[Document]) -> tuple[Operation, Operation]:
    """`insert_one` per document, and pushgw's InsertBatcher (concurrent inserts share `insert_many`)."""
    collection = mongo[CEILING_DB][COLLECTION]
    batcher = InsertBatcher(collection)
    template = status_template()

    def insert_one() -> Awaitable[object]:
        return collection.insert_one({**template, "_id": new_object_id()})

    def grouped_insert() -> Awaitable[object]:
        return batcher.insert({**template, "_id": new_object_id()})

    return insert_one, grouped_insert


def make_publish(exchange: AbstractExchange) -> Operation:
    body = plan_body()

    async def publish() -> None:
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=new_object_id(),
        )
        confirmation = await exchange.publish(message, routing_key=CEILING_ROUTE, mandatory=True, timeout=5)
        if not isinstance(confirmation, Basic.Ack):
            raise BenchError(f"broker did not confirm: {type(confirmation).__name__}")

    return publish


async def declare_ceiling_queue(channel: AbstractChannel, prefix: str) -> AbstractExchange:
    """`<prefix>.ceiling`: a quorum queue with the work queues' arguments, on the gateway's exchange."""
    topology = Topology(prefix, delivery_limit=5)
    exchange = await channel.declare_exchange(
        topology.work_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await channel.declare_queue(
        topology.queue(CEILING_ROUTE), durable=True, arguments=topology.work_queue_arguments()
    )
    await queue.bind(exchange, routing_key=CEILING_ROUTE)
    return exchange


async def run_ops(operation: Operation, concurrency: int, duration_s: float) -> Timing:
    timing = Timing()
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        while (begun := time.perf_counter()) < deadline:
            await operation()
            timing.latencies.append(time.perf_counter() - begun)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    timing.elapsed_s = time.perf_counter() - started
    return timing


def ceiling_operations(insert_one: Operation, grouped: Operation, publish: Operation) -> dict[str, Operation]:
    def then_publish(insert: Operation) -> Operation:
        async def both() -> None:
            await insert()
            await publish()

        return both

    return {
        "insert_one": insert_one,  # (a)
        "publish": publish,  # (b)
        "insert_then_publish": then_publish(insert_one),  # (c)
        "grouped_insert": grouped,  # (d)
        "grouped_insert_then_publish": then_publish(grouped),  # (e)
    }


async def measure_ceiling(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    assert stack.mongo is not None
    mongo = create_client(stack.mongo_uri, 5000)  # pushgw's own client: w=majority, same timeouts
    connection = await aio_pika.connect(RABBIT_URL, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        publish = make_publish(await declare_ceiling_queue(channel, stack.prefix))
        results: dict[str, Any] = {}
        for name, operation in ceiling_operations(*make_inserts(mongo), publish).items():
            say(f"ceiling {name} {args.ceiling_duration:g} s")
            await run_ops(operation, args.concurrency, CEILING_WARMUP_S)
            meter = CpuMeter({"secantus": stack.mongo.pid, "bench": os.getpid()})
            timing = await run_ops(operation, args.concurrency, args.ceiling_duration)
            results[name] = {
                "rate_per_s": round(timing.rate, 1),
                "count": timing.count,
                "latency_ms": timing.latency_ms(),
                "cpu_percent_of_one_core": meter.percent(),
            }
        return results
    finally:
        await connection.close()
        await mongo.close()


# ---------------------------------------------------------------- verification


async def plan_message_count(prefix: str) -> int:
    connection = await aio_pika.connect(RABBIT_URL, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{prefix}.plan", passive=True)
        return int(queue.declaration_result.message_count or 0)


async def verify(stack: Stack, answers_200: int) -> dict[str, Any]:
    """Poll (with a deadline) until documents and queued messages both equal the 200 answers."""
    mongo = create_client(stack.mongo_uri, 30_000)
    deadline = time.monotonic() + VERIFY_TIMEOUT_S
    try:
        while True:
            documents = await mongo[GATEWAY_DB][COLLECTION].count_documents({})
            messages = await plan_message_count(stack.prefix)
            ok = documents == messages == answers_200
            if ok or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)  # poll interval, up to the deadline above
    finally:
        await mongo.close()
    return {
        "answers_200": answers_200,
        "push_status_documents": documents,
        "plan_messages": messages,
        "ok": ok,
    }


# ---------------------------------------------------------------- profiling (optional)


def start_profiler(args: argparse.Namespace, pid: int) -> subprocess.Popen[bytes] | None:
    if not args.profile:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    say(f"py-spy recording pid {pid} into {args.profile}")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(int(args.duration)), "--rate", str(PROFILE_RATE_HZ),
         "--nolineno", "--format", "raw", "--output", args.profile],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish_profiler(profiler: subprocess.Popen[bytes], path: Path, duration_s: float) -> dict[str, Any]:
    """Wait (with a deadline) for py-spy to write its file, then summarise it."""
    try:
        profiler.wait(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_process(profiler, STOP_TIMEOUT_S)
    if not path.exists():
        stderr = profiler.stderr.read().decode(errors="replace") if profiler.stderr else ""
        return {"error": f"py-spy wrote nothing: {stderr.strip()[:300]}"}
    return summarize_profile(path, duration_s)


def summarize_profile(path: Path, duration_s: float, top: int = 15) -> dict[str, Any]:
    """Shares of the gateway's busy samples: pushgw functions inclusive, leaf functions and packages self.

    py-spy omits idle samples, so `busy_percent` (samples / possible samples) is the gateway's CPU use.
    """
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples, frames = int(count), [short_frame(frame) for frame in stack.split(";")]
        total += samples
        leaf[frames[-1]] += samples
        for frame in set(frames):
            if frame.startswith("pushgw/") and not frame.startswith("pushgw/cli.py"):
                inclusive[frame] += samples
    by_package: Counter[str] = Counter()
    for frame, samples in leaf.items():
        by_package[frame.split("/", 1)[0].split(":", 1)[0].removesuffix(".py")] += samples

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {name: percent(n, total) for name, n in counter.most_common(top)}

    return {
        "samples": total,
        "busy_percent": percent(total, PROFILE_RATE_HZ * duration_s),
        "pushgw_inclusive_percent": shares(inclusive),
        "self_by_function_percent": shares(leaf),
        "self_by_package_percent": shares(by_package),
    }


def short_frame(frame: str) -> str:
    """`accept (pushgw/intake.py)` → `pushgw/intake.py:accept`; uvloop's C loop shows up as Runner.run."""
    function, _, where = frame.partition(" (")
    if function == "Runner.run":
        return "uvloop (C event loop, sockets, callbacks)"
    return f"{where.removesuffix(')')}:{function}"


# ---------------------------------------------------------------- report


def percent(part: float, whole: float) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


def assemble(
    args: argparse.Namespace,
    stack: Stack,
    gateway: dict[str, Any],
    verified: dict[str, Any],
    ceiling: dict[str, Any],
) -> dict[str, Any]:
    rate, p99 = gateway["rate_per_s"], gateway["latency_ms"]["p99"]
    rates = {name: row["rate_per_s"] for name, row in ceiling.items()}
    bounds = {
        "ceiling_per_s": min(rates["insert_one"], rates["publish"]),
        "sequential_per_s": rates["insert_then_publish"],
        "grouped_ceiling_per_s": min(rates["grouped_insert"], rates["publish"]),
        "grouped_sequential_per_s": rates["grouped_insert_then_publish"],
    }
    share = percent(rate, bounds["ceiling_per_s"])
    return {
        "config": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "ceiling_duration_s": args.ceiling_duration,
            "queue_prefix": stack.prefix,
            "machine_busy_before_start_percent": args.busy_before_start,
            "note": "one SecantusDB (temp storage) serves both the gateway run and the ceiling; "
            "RabbitMQ at 127.0.0.1:5672; everything shares the machine's cores",
        },
        "gateway": gateway,
        "verify": verified,
        "ceiling": {**ceiling, **bounds},
        "ratios_percent": {
            name.removesuffix("_per_s"): percent(rate, value) for name, value in bounds.items()
        },
        "targets": {
            "rate": {"target": f">= {TARGET_RATE:g}/s", "value": rate, "pass": rate >= TARGET_RATE},
            "p99_ms": {"target": f"<= {TARGET_P99_MS:g} ms", "value": p99, "pass": p99 <= TARGET_P99_MS},
            "of_ceiling": {
                "target": f">= {TARGET_SHARE:.0%}",
                "value": share,
                "pass": share >= 100 * TARGET_SHARE,
            },
        },
    }


def cpu_text(cpu: dict[str, float]) -> str:
    parts = "  ".join(f"{name} {value:.0f}" for name, value in cpu.items() if name != "machine")
    text = f"          cpu, % of one core: {parts}  (machine {cpu['machine']:.0f} of {100 * (os.cpu_count() or 1)})"
    if cpu.get("foreign", 0.0) > FOREIGN_CPU_WARNING:
        text += (
            f"\n          !!! other processes used {cpu['foreign']:.0f} % of a core: this phase is disturbed"
        )
    return text


CEILING_LABELS = {
    "insert_one": "(a) insert_one w=majority",
    "publish": "(b) confirmed publish",
    "insert_then_publish": "(c) insert_one, then publish",
    "grouped_insert": "(d) grouped insert (insert_many)",
    "grouped_insert_then_publish": "(e) grouped insert, then publish",
}


def print_report(results: dict[str, Any]) -> None:
    config, gateway, verified = results["config"], results["gateway"], results["verify"]
    print(
        f"\npushgw intake bench: concurrency {config['concurrency']}, {config['duration_s']:g} s "
        f"(+{config['warmup_s']:g} s warm-up), ceiling {config['ceiling_duration_s']:g} s per write"
    )
    print(f"  note: {config['note']}")
    print(f"  machine busy before start: {config['machine_busy_before_start_percent']:.0f} % of one core")
    print(
        f"gateway   {gateway['rate_per_s']:.0f} accepted pushes/s ({gateway['accepted']} in "
        f"{gateway['elapsed_s']:.1f} s)   latency {latency_text(gateway['latency_ms'])}"
    )
    print_failures(gateway)
    print(cpu_text(gateway["cpu_percent_of_one_core"]))
    state = "OK" if verified["ok"] else "!!!!! MISMATCH !!!!!"
    print(
        f"verify    {state}: 200 answers {verified['answers_200']}, _PushStatus documents "
        f"{verified['push_status_documents']}, plan messages {verified['plan_messages']}"
    )
    print_ceiling(results["ceiling"], results["ratios_percent"])
    for name, target in results["targets"].items():
        verdict = "PASS" if target["pass"] else "MISS"
        print(f"target    {name:<11} {target['target']:<10} {verdict}  ({target['value']})")
    if "profile" in gateway:
        print(f"profile   {json.dumps(gateway['profile'], indent=2)}")


def print_ceiling(ceiling: dict[str, Any], ratios: dict[str, float]) -> None:
    for name, label in CEILING_LABELS.items():
        row = ceiling[name]
        print(
            f"ceiling   {label:<33} {row['rate_per_s']:>6.0f}/s   latency {latency_text(row['latency_ms'])}"
        )
        print(cpu_text(row["cpu_percent_of_one_core"]))
    print(
        f"ceiling   min(a, b) = {ceiling['ceiling_per_s']:.0f}/s   (c) = {ceiling['sequential_per_s']:.0f}/s   "
        f"min(d, b) = {ceiling['grouped_ceiling_per_s']:.0f}/s   (e) = {ceiling['grouped_sequential_per_s']:.0f}/s"
    )
    print(
        f"share     pushgw / ceiling min(a, b) = {ratios['ceiling']:.1f} %   pushgw / (c) = {ratios['sequential']:.1f} %"
        f"   pushgw / min(d, b) = {ratios['grouped_ceiling']:.1f} %   pushgw / (e) = {ratios['grouped_sequential']:.1f} %"
    )


def print_failures(gateway: dict[str, Any]) -> None:
    if not gateway["failures"]:
        print("          non-200 answers: none")
        return
    print("          !!!!! NON-200 / BROKEN ANSWERS !!!!!")
    for kind, count in gateway["failures"].items():
        print(f"          !!! {count} x {kind}: {gateway['failure_samples'].get(kind, '')}")


# ---------------------------------------------------------------- main


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    args.busy_before_start = wait_for_quiet(args.wait_quiet, say)
    say(f"starting SecantusDB (storage {stack.tmp / 'mongo'})")
    start_secantus(stack)
    say(f"starting pushgw serve (queue prefix {stack.prefix})")
    start_gateway(stack)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        gateway = runner.run(measure_gateway(stack, args))
        say("stopping pushgw: no gateway and no load while the ceiling is measured")
        stop_process(stack.gateway, STOP_TIMEOUT_S)
        verified = runner.run(verify(stack, gateway["warmup_accepted"] + gateway["accepted"]))
        ceiling = runner.run(measure_ceiling(stack, args))
    return assemble(args, stack, gateway, verified, ceiling)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of gateway load (default 20)")
    parser.add_argument("--concurrency", type=int, default=24, help="concurrent clients (default 24)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up load (default 3)")
    parser.add_argument("--ceiling-duration", type=float, default=10.0, help="seconds per ceiling write")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the gateway during the load (raw stacks)")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="S", help="wait up to S s for an idle machine first"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON object holding every number")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="intake processes (`http.processes`; CPU shown is the parent's)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    with tempfile.TemporaryDirectory(prefix="pushgw-bench-") as tmp:
        stack = Stack(Path(tmp), processes=args.processes)
        try:
            results = run(stack, args)
        except KeyboardInterrupt:
            say("interrupted: stopping everything this bench started")
            return 130
        except BenchError as error:
            say(f"FAILED: {error}")
            return 1
        finally:
            teardown(stack)
    print_report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if results["verify"]["ok"] and not results["gateway"]["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
