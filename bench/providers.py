"""Provider throughput benchmark: devices/s from one worker process through `ApnsProvider` / `FcmProvider`.

One run, one process tree. Every measurement drives the real provider in a child process of its own (the
"worker process": one process, uvloop) the way `workers/sender.py` does: `--prefetch` (4) units of
`--batch` (500) devices in flight, each unit sending its devices in chunks of `--chunk` (100) through
`provider.send` one chunk after the other, until `--devices` (50,000) devices have an outcome. The server
runs in a process of its own too, so the CPU of each side is measured separately:

  (a) sink: `nghttpd` (C) over TLS with an empty file per device token under `htdocs/3/device/`, so every
      POST /3/device/<token> gets a fast 200; its raw capacity is measured with `h2load` in the same run
      (same paths, APNs-like headers, the same ~150-byte body, 4 connections × 100 streams) — the ceiling.
      The server costs almost nothing here, so this is the provider's own CPU limit;
  (b) the APNs emulator (`pushgw.emulators.apns`) in Apple-like mode: token auth, `apple_throttle=True`
      (one stream after a rejection until the next 200; one stream on a new connection until the first
      200), with 0 %, 1 % and 5 % of the tokens answered `BadDeviceToken` (valid hex tokens starting with
      `bad0`, so they pass the provider's local format check and reach the emulator). With bad tokens the
      worker runs two passes over the same devices: in the second the provider already knows the bad tokens
      as dead (APNs said `BadDeviceToken` for a single-environment app) and fails them locally, without a
      request (tokens only suspected would go on its quarantine lane);
  (c) aioapns 4 against the same emulator, 0 % and 5 % bad, same concurrency model (see `AioapnsSender`
      for the bench-only hack that points it at the emulator, and the timeout a production wrapper needs);
  (d) FCM: `FcmProvider` (httpx2) against the FCM emulator, plus a clearly labelled side experiment: the
      same messages through our own `Http2Pool` (if `pushgw.emulators.fcm` is missing, FCM is skipped).

(b)–(d) run once per `--delays` value (default 0 and 30 ms): the emulators hold every answer that long, a
stand-in for the round trip to Apple/Google, which bounds what `prefetch × chunk` requests in flight can do.
The emulators are Python (h2): on loopback they cost about as much CPU per request as the provider.

Each worker first sends `--warmup` devices (connections open, JWT minted, the first 200 lifts the stream
limit), then measures: wall time, devices/s, outcomes, CPU of the worker and of the server process, and
`foreign` = everything else on the machine (above 20 % of a core the phase is flagged as disturbed). The
emulator's own counters (requests, accepted, rejected, throttles, requests per connection) are read before
and after each pass. A pass takes no new units after `--max-seconds` and is cut off `PASS_GRACE_S` later (a
collapsed or hung client would otherwise take hours); it then reports the rate of what got done. The
devices are built before measuring and frozen out of the garbage collector (`gc.freeze`): a worker holds
`prefetch × batch` devices, not the whole run.

Run: `.venv/bin/python bench/providers.py [--devices 50000] [--only sink,apns,aioapns,fcm] [--delays 0,30]
[--json] [--wait-quiet 300] [--profile DIR] [--keep-logs DIR]`. Exit code: 0 when every phase ran and our
providers' outcome counts match the emulator's (aioapns mismatches are reported, not failed); 1 when a count
did not match; 2 when the bench could not run; 130 on Ctrl-C/SIGTERM. Targets do not affect the exit code.
Children (nghttpd, emulators, workers, py-spy) and the temp dir are removed on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    BenchError,
    CpuMeter,
    free_port,
    json_safe,
    keep_logs,
    raise_interrupt,
    tail,
    wait_for_quiet,
)

from pushgw.messages import Device
from pushgw.settings import AppSettings
from workers.outcomes import Deferred, Failed, Outcome, Sent
from workers.providers.apns_payload import build_request
from workers.providers.provider import Notification, PushContext

REPO = Path(__file__).resolve().parent.parent
APP_ID, PUSH_ID, BUNDLE_ID = "bench", "benchPush01", "com.example.bench"
BAD_PREFIX = "bad0"  # hex, so the provider's is_valid_token lets it through to the emulator's rule
BAD_REASON = "BadDeviceToken"
DATA: dict[str, Any] = {"alert": "Your order #48213 has shipped and will arrive on Thursday", "title": "Shipped",
                        "badge": 1, "sound": "default", "orderId": "48213"}  # fmt: skip
TARGET_APNS, TARGET_FCM, TARGET_BAD_SHARE = 12_000.0, 8_000.0, 0.50
AIOAPNS_REFERENCE = {"clean": 3_022, "bad5_throttle": 27}  # providers.md §1.5 (30 ms RTT, 1 connection)
REQUEST_TIMEOUT_S = 10.0  # ApnsSettings.request_timeout_s's default
PASS_GRACE_S = 30.0  # after --max-seconds, in-flight units get this long before the pass is cut off
FOREIGN_CPU_WARNING = 20.0
START_TIMEOUT_S, STOP_TIMEOUT_S = 60.0, 15.0
SINK_STREAMS = 1000  # nghttpd's SETTINGS_MAX_CONCURRENT_STREAMS (APNs announces 500-1500)
H2LOAD_CLIENTS, H2LOAD_STREAMS = 4, 100  # like the provider: 4 main connections, ≤ 400 requests in flight


def say(text: str) -> None:
    print(f"[providers {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- devices


def make_tokens(count: int, bad_percent: float, seed: int) -> list[str]:
    """`count` distinct 64-hex tokens; round(count × bad %) of them, at random places, start with BAD_PREFIX."""
    rng = random.Random(seed)
    bad = set(rng.sample(range(count), round(count * bad_percent / 100)))
    tokens = []
    for index in range(count):
        if index in bad:
            tokens.append(BAD_PREFIX + rng.randbytes(30).hex())
            continue
        token = rng.randbytes(32).hex()
        while token.startswith(BAD_PREFIX):
            token = rng.randbytes(32).hex()
        tokens.append(token)
    return tokens


def notifications(tokens: Sequence[str], device_type: str, transport: str) -> list[Notification]:
    return [
        Notification(
            Device(
                object_id=f"i{index:07d}", device_type=device_type, transport=transport, device_token=token
            ),
            DATA,
        )
        for index, token in enumerate(tokens)
    ]


def apns_body() -> bytes:
    return build_request(DATA, {}, push_id=PUSH_ID, token="00", topic=BUNDLE_ID, expiry_ms=None).body


# ---------------------------------------------------------------- CPU


# ---------------------------------------------------------------- worker process


@dataclass
class Tally:
    sent: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    deferred: Counter[str] = field(default_factory=Counter)
    cut_off: bool = False

    def add(self, outcome: Outcome) -> None:
        if isinstance(outcome, Sent):
            self.sent += 1
        elif isinstance(outcome, Failed):
            self.failed[outcome.reason] += 1
        elif isinstance(outcome, Deferred):
            self.deferred[outcome.reason] += 1

    @property
    def total(self) -> int:
        return self.sent + sum(self.failed.values()) + sum(self.deferred.values())


async def drive(
    provider: Any, items: list[Notification], spec: dict[str, Any], deadline: float, attempt: int = 1
) -> Tally:
    """workers/sender.py's shape: `prefetch` units in flight, each sending its chunks one after the other."""
    context = PushContext(APP_ID, PUSH_ID, {}, None, attempt)
    batch, chunk = spec["batch"], spec["chunk"]
    units = deque(items[start : start + batch] for start in range(0, len(items), batch))
    tally = Tally()

    async def consumer() -> None:
        while units and time.monotonic() < deadline:
            unit = units.popleft()
            for start in range(0, len(unit), chunk):
                for outcome in await provider.send(context, unit[start : start + chunk]):
                    tally.add(outcome)

    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + PASS_GRACE_S):
            await asyncio.gather(*(consumer() for _ in range(spec["prefetch"])))
    except TimeoutError:
        tally.cut_off = True  # units still in flight (a client that hangs): what is done so far counts
    return tally


async def emulator_stats(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The emulator's counters: SIGUSR1 makes the emulator process write them (None: no emulator).

    Not `GET /emulator/stats`: that would open a connection of its own, and the APNs emulator's answer
    breaks once `rejected` has entries (`dataclasses.asdict` turns the Counter's keys into tuples)."""
    if not spec.get("stats_file"):
        return None
    last = read_snapshot(spec["stats_file"])
    os.kill(spec["server_pid"], signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # poll interval while the emulator writes
        stats = read_snapshot(spec["stats_file"])
        if stats and stats["snapshot"] > last.get("snapshot", 0):
            return stats
    raise BenchError("the emulator did not write its stats within 10 s")


def read_snapshot(path: str) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError):
        snapshot: dict[str, Any] = json.loads(Path(path).read_text())
        return snapshot
    return {}


def stats_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    delta: dict[str, Any] = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, int) and isinstance(old, int) and key != "max_concurrent_streams":
            delta[key] = value - old
        elif isinstance(value, dict) and isinstance(old, dict) and key != "provider_tokens_by_team":
            changed = {name: count - old.get(name, 0) for name, count in value.items()}
            delta[key] = {name: count for name, count in changed.items() if count}
        else:
            delta[key] = value
    return delta


def build_sender(spec: dict[str, Any]) -> Any:
    kind = spec["kind"]
    if kind == "apns":
        from workers.providers.apns import ApnsProvider

        return ApnsProvider([AppSettings.model_validate(spec["app"])])
    if kind == "fcm":
        from workers.providers.fcm import FcmProvider

        return FcmProvider([AppSettings.model_validate(spec["app"])])
    if kind == "aioapns":
        return AioapnsSender(spec)
    if kind == "fcm-http2":
        return FcmHttp2Sender(spec)
    raise ValueError(kind)


async def measure_pass(
    sender: Any, items: list[Notification], spec: dict[str, Any], number: int
) -> dict[str, Any]:
    before = await emulator_stats(spec)
    meter = CpuMeter(
        {"worker": os.getpid(), "server": spec["server_pid"], "bench": spec["bench_pid"]}, rabbitmq=False
    )
    started = time.perf_counter()
    tally = await drive(sender, items, spec, time.monotonic() + spec["max_seconds"])
    seconds = time.perf_counter() - started
    cpu = meter.percent()
    after = await emulator_stats(spec)
    return {
        "pass": number, "devices": len(items), "done": tally.total, "seconds": round(seconds, 3),
        "rate": round(tally.total / seconds, 1) if seconds else 0.0, "sent": tally.sent,
        "failed": dict(tally.failed), "deferred": dict(tally.deferred), "cpu": cpu,
        "server": stats_delta(before, after), "complete": tally.total == len(items), "cut_off": tally.cut_off,
    }  # fmt: skip


async def worker_main(spec: dict[str, Any]) -> dict[str, Any]:
    device_type, transport = ("android", "fcm") if spec["kind"].startswith("fcm") else ("ios", "apns")
    warm = notifications(make_tokens(spec["warmup"], 0.0, spec["seed"] + 1), device_type, transport)
    items = notifications(
        make_tokens(spec["devices"], spec["bad_percent"], spec["seed"]), device_type, transport
    )
    sender = build_sender(spec)
    # The bench holds every device of the run (a worker holds prefetch × batch): keep the garbage collector
    # from rescanning them on every collection, so it costs what the provider's own garbage costs.
    gc.collect()
    gc.freeze()
    try:
        warm_tally = await drive(sender, warm, spec, time.monotonic() + spec["max_seconds"])
        passes = [await measure_pass(sender, items, spec, number) for number in range(1, spec["passes"] + 1)]
        extra = sender.describe() if hasattr(sender, "describe") else {}
    finally:
        await sender.close()
    return {"warmup": {"sent": warm_tally.sent, "other": warm_tally.total - warm_tally.sent},
            "passes": passes, **extra}  # fmt: skip


def run_worker_role(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    write_json(spec["out"], uvloop.run(worker_main(spec)))
    return 0


def write_json(path: str, value: Any) -> None:
    """Atomically, so the bench never reads half a file."""
    temporary = Path(path + ".tmp")
    temporary.write_text(json.dumps(value))
    temporary.rename(path)


# ---------------------------------------------------------------- other clients (worker process side)


class AioapnsSender:
    """aioapns 4 behind the Provider interface, pointed at the emulator — a bench-only hack.

    aioapns connects to fixed hosts: `APNsProductionClientProtocol.APNS_SERVER` / `APNS_PORT` are class
    attributes its pool reads when connecting (and sends as the `host` header). The bench swaps the pool's
    `protocol_class` for a subclass with the emulator's host and port, and passes an SSL context trusting the
    emulator's CA (with ALPN h2, which aioapns itself never sets; the emulator speaks h2 regardless). Failures
    go to a no-op `err_func` and aioapns' logger is silenced, so it does not log every rejection (Sygnal
    passes its own handler too). aioapns has no per-request timeout, so a wrapper needs one (providers.md
    §4.2): each send runs under `asyncio.timeout(10 s)` (our request_timeout_s; cheaper than `wait_for`, no
    extra task); a timeout or an aioapns error (ConnectionError, ConnectionClosed, MaxAttemptsExceeded after
    its own five attempts, and h2's ProtocolError, which aioapns lets through when it sends on a connection
    the server closed) counts as Deferred, as our provider would count it.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        import logging

        from aioapns import APNs, NotificationRequest, PushType
        from aioapns.connection import APNsProductionClientProtocol
        from aioapns.exceptions import ConnectionClosed, ConnectionError, MaxAttemptsExceeded
        from h2.exceptions import ProtocolError

        from workers.providers.apns_payload import build_payload

        logging.getLogger("aioapns").setLevel(logging.CRITICAL)
        context = ssl.create_default_context(cafile=spec["ca_file"])
        context.set_alpn_protocols(["h2"])
        credential = spec["app"]["apns"][0]

        async def ignore(request: Any, result: Any) -> None:
            return None

        self._client = APNs(
            key=Path(credential["key_file"]).read_text(), key_id=credential["key_id"],
            team_id=credential["team_id"], topic=BUNDLE_ID, ssl_context=context, err_func=ignore,
            max_connections=spec["aioapns_connections"],
        )  # fmt: skip
        attributes = {"APNS_SERVER": "127.0.0.1", "APNS_PORT": spec["port"]}
        self._client.pool.protocol_class = type(
            "EmulatorProtocol", (APNsProductionClientProtocol,), attributes
        )
        self._request, self._alert, self._payload = NotificationRequest, PushType.ALERT, build_payload
        self._errors = (TimeoutError, ConnectionClosed, ConnectionError, MaxAttemptsExceeded, ProtocolError)

    async def send(self, push: PushContext, items: Sequence[Notification]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_one(item) for item in items)))

    async def _send_one(self, item: Notification) -> Outcome:
        request = self._request(device_token=item.device.device_token or "", message=self._payload(item.data),
                                push_type=self._alert, priority=10)  # fmt: skip
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                result = await self._client.send_notification(request)
        except self._errors as error:
            return Deferred(item.device, type(error).__name__)
        return Sent(item.device) if result.is_successful else Failed(item.device, result.description or "")

    def describe(self) -> dict[str, Any]:
        return {"aioapns_connections_open": len(self._client.pool.connections)}

    async def close(self) -> None:
        self._client.pool.close()


class FcmHttp2Sender:
    """Side experiment: FcmProvider's messages (same build_message, JSON, access token, URL) through our own
    `Http2Pool` instead of httpx2. 200 → Sent, anything else → Failed with the status: no classification,
    no retries — it only shows what the transport costs."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from workers.providers.fcm import FcmProject
        from workers.providers.http2 import Http2Pool

        settings = AppSettings.model_validate(spec["app"]).fcm
        assert settings is not None
        self._project = FcmProject(settings)  # for its access token (minted over httpx2 once) and URL
        self._path = self._project.url.split(str(spec["port"]), 1)[1].encode()
        context = ssl.create_default_context(cafile=spec["ca_file"])
        self._pool = Http2Pool("127.0.0.1", spec["port"], context, connections=settings.connections)

    async def send(self, push: PushContext, items: Sequence[Notification]) -> list[Outcome]:
        from datetime import UTC, datetime

        from workers.providers.fcm_payload import build_message

        sent_at = datetime.now(UTC)
        authorization = (await self._project.token.header()).encode()

        async def one(item: Notification) -> Outcome:
            message = build_message(item.data, push.options, token=item.device.device_token or "",
                                    push_id=push.push_id, sent_at=sent_at, expiry_ms=push.expiry_ms)  # fmt: skip
            body = json.dumps({"message": message}).encode()
            headers = [(b"authorization", authorization), (b"content-type", b"application/json")]
            response = await self._pool.request(b"POST", self._path, headers, body, 10.0)
            return (
                Sent(item.device) if response.status == 200 else Failed(item.device, f"HTTP{response.status}")
            )

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def close(self) -> None:
        await self._pool.close()
        await self._project.close()


# ---------------------------------------------------------------- emulator process


def run_emulator_role(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    uvloop.run(serve_emulator(spec))
    return 0


async def serve_emulator(spec: dict[str, Any]) -> None:
    """Start the emulator, write what clients need to `out`, serve until SIGTERM/SIGINT."""
    emulator = make_emulator(spec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await emulator.start()
    info = emulator_info(emulator)
    snapshots = iter(range(1, 1 << 62))

    def dump_stats() -> None:
        stats = emulator.stats()
        counters = {
            name: dict(value) if isinstance(value, dict) else value for name, value in vars(stats).items()
        }
        write_json(spec["stats_out"], counters | {"snapshot": next(snapshots)})

    loop.add_signal_handler(signal.SIGUSR1, dump_stats)
    write_json(spec["out"], info)
    await stop.wait()
    await emulator.stop()


def make_emulator(spec: dict[str, Any]) -> Any:
    directory = Path(spec["directory"])
    if spec["kind"] == "apns":
        from pushgw.emulators.apns import ApnsEmulator

        return ApnsEmulator(
            directory=directory, auth="token", apple_throttle=True, token_rules={BAD_PREFIX: BAD_REASON},
            keep_notifications=1, response_delay_ms=spec["delay_ms"],
        )  # fmt: skip
    from pushgw.emulators.fcm import FcmEmulator

    return FcmEmulator(directory=directory, keep_messages=1, response_delay_ms=spec["delay_ms"])


def emulator_info(emulator: Any) -> dict[str, Any]:
    """What clients need, once the emulator listens (the FCM service account is written by `start()`)."""
    info = {"url": emulator.url, "port": emulator.port, "pid": os.getpid(), "ca_file": str(emulator.ca_file)}
    if hasattr(emulator, "token_key_file"):
        return info | {"key_file": str(emulator.token_key_file), "key_id": emulator.key_id,
                       "team_id": emulator.team_id}  # fmt: skip
    return info | {"service_account_file": str(emulator.service_account_file)}


# ---------------------------------------------------------------- orchestrator: children


@dataclass
class Stack:
    """What this run started: the temp dir and the child processes still running."""

    tmp: Path
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """A child in its own session: Ctrl-C reaches only the bench, which then stops the children."""
        with log.open("ab") as out:
            child = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                start_new_session=True,
            )  # fmt: skip
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes]) -> None:
        """SIGTERM, wait, SIGKILL on timeout."""
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in list(reversed(self.children)):
            self.stop(child)


def wait_for_file(path: Path, child: subprocess.Popen[bytes], log: Path, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if child.poll() is not None:
            raise BenchError(f"{what} exited with code {child.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not done within {timeout_s:.0f} s:\n{tail(log)}")
        time.sleep(0.05)  # poll interval while a child works
    return json.loads(path.read_text())


def role_args(role: str, spec: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, "--spec", str(spec)]


def start_emulator(
    stack: Stack, kind: str, name: str, delay_ms: int
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    spec_path, out, log = (stack.tmp / f"{name}.{suffix}" for suffix in ("spec.json", "info.json", "log"))
    stats = stack.tmp / f"{name}.stats.json"
    spec = {"kind": kind, "directory": str(stack.tmp / name), "out": str(out), "stats_out": str(stats),
            "delay_ms": delay_ms}  # fmt: skip
    spec_path.write_text(json.dumps(spec))
    child = stack.spawn(role_args("emulator", spec_path), log)
    info: dict[str, Any] = wait_for_file(out, child, log, START_TIMEOUT_S, f"{kind} emulator")
    return child, info | {"stats_file": str(stats)}


def run_worker(stack: Stack, name: str, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    spec_path, out, log = (stack.tmp / f"{name}.{suffix}" for suffix in ("spec.json", "result.json", "log"))
    spec |= {"out": str(out), "bench_pid": os.getpid(), "devices": args.devices, "warmup": args.warmup,
             "prefetch": args.prefetch, "batch": args.batch, "chunk": args.chunk, "max_seconds": args.max_seconds,
             "seed": args.seed}  # fmt: skip
    spec.setdefault("passes", 1)
    spec_path.write_text(json.dumps(spec))
    child = stack.spawn(role_args("worker", spec_path), log)
    profiler = profile_path = None
    if args.profile:
        profile_path = args.profile / f"{name}.txt"
        profiler = stack.spawn(py_spy_args(child.pid, profile_path), stack.tmp / f"{name}.py-spy.log")
    budget_s = START_TIMEOUT_S + (spec["passes"] + 1) * (args.max_seconds + 30)
    try:
        result: dict[str, Any] = wait_for_file(out, child, log, budget_s, f"worker {name}")
    finally:
        stack.stop(child)
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=STOP_TIMEOUT_S)  # py-spy writes its file when the worker exits
            stack.stop(profiler)
    if profile_path is not None and profile_path.exists():
        result["profile"] = summarize_profile(profile_path)
    return result


def py_spy_args(pid: int, output: Path) -> list[str]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [py_spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--nolineno",
            "--format", "raw", "--output", str(output)]  # fmt: skip


def summarize_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """Shares of the worker's samples (warm-up included): leaf functions, and our functions inclusive."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = [short_frame(frame) for frame in stack.split(";")]
        total += samples
        leaf[frames[-1]] += samples
        for frame in set(frames):
            if frame.startswith(("workers/", "pushgw/")):
                inclusive[frame] += samples

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {name: round(100 * n / total, 1) for name, n in counter.most_common(top)} if total else {}

    return {
        "file": str(path),
        "samples": total,
        "self_percent": shares(leaf),
        "inclusive_percent": shares(inclusive),
    }


def short_frame(frame: str) -> str:
    function, _, where = frame.partition(" (")
    where = where.removesuffix(")").split("site-packages/")[-1].removeprefix(f"{REPO}/")
    return f"{where}:{function}"


def apns_app(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "app_id": APP_ID, "master_key": "bench-master-key",
        "apns": [{"bundle_ids": [BUNDLE_ID], "url": info["url"], "ca_file": info["ca_file"],
                  "key_file": info["key_file"], "key_id": info["key_id"], "team_id": info["team_id"]}],
    }  # fmt: skip


# ---------------------------------------------------------------- phases


def sink_phase(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """(a) nghttpd: h2load's ceiling, then ApnsProvider against the same sink."""
    from pushgw.emulators import tls

    workdir = stack.tmp / "sink"
    device_dir = workdir / "htdocs" / "3" / "device"
    device_dir.mkdir(parents=True)
    tokens = make_tokens(args.devices, 0.0, args.seed) + make_tokens(args.warmup, 0.0, args.seed + 1)
    for token in tokens:
        (device_dir / token).touch()
    key, cert = workdir / "key.pem", workdir / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    log = stack.tmp / "nghttpd.log"
    server = stack.spawn(["nghttpd", f"--max-concurrent-streams={SINK_STREAMS}", "-d", str(workdir / "htdocs"),
                          str(port), str(key), str(cert)], log)  # fmt: skip
    wait_listening(port, server, log)
    try:
        ceiling = h2load(workdir, port, tokens[: args.devices], server.pid, args)
        say(
            f"sink ceiling (h2load): {ceiling['rate']:,.0f} req/s, nghttpd cpu {ceiling['cpu']['server']:.0f} %"
        )
        key_file = tls.write_apns_key(workdir / "AuthKey_SINK000001.p8")  # nghttpd ignores it; the JWT costs
        info = {"url": f"https://127.0.0.1:{port}", "ca_file": str(cert), "key_file": str(key_file),
                "key_id": "SINK000001", "team_id": "TEAM000001"}  # fmt: skip
        spec = {
            "kind": "apns",
            "app": apns_app(info),
            "server_pid": server.pid,
            "port": port,
            "bad_percent": 0.0,
        }
        result = run_worker(stack, "sink-apns", spec, args)
    finally:
        stack.stop(server)
    measured = result["passes"][0]
    answered = measured["sent"] + sum(measured["failed"].values())
    measured["answered_rate"] = round(answered / measured["seconds"], 1) if measured["seconds"] else 0.0
    measured["share_of_ceiling"] = (
        round(100 * measured["answered_rate"] / ceiling["rate"], 1) if ceiling["rate"] else 0.0
    )
    return {"ceiling": ceiling, "apns": result}


def h2load(
    workdir: Path, port: int, tokens: list[str], server_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    body, uris = workdir / "body.json", workdir / "uris.txt"
    body.write_bytes(apns_body())
    uris.write_text("".join(f"https://127.0.0.1:{port}/3/device/{token}\n" for token in tokens))
    headers = {"authorization": "bearer " + "e" * 180, "apns-topic": BUNDLE_ID, "apns-push-type": "alert",
               "apns-priority": "10", "apns-id": "6f2b4c1e-1d2a-5b3c-9d4e-0f1a2b3c4d5e"}  # fmt: skip
    command = ["h2load", "-n", str(args.h2load_requests), "-c", str(H2LOAD_CLIENTS), "-m", str(H2LOAD_STREAMS),
               "-t", "1", "-d", str(body), "-i", str(uris)]  # fmt: skip
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    meter = CpuMeter({"server": server_pid, "bench": os.getpid()}, rabbitmq=False)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
    seconds = time.perf_counter() - started
    cpu = meter.percent()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    h2load_cpu_s = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    cpu["h2load"] = round(100 * h2load_cpu_s / seconds, 1)
    cpu["foreign"] = round(max(0.0, cpu["foreign"] - cpu["h2load"]), 1)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if rate is None or codes is None:
        raise BenchError(f"cannot read h2load's output:\n{output}")
    return {"rate": float(rate.group(1)), "requests": args.h2load_requests, "status_2xx": int(codes.group(1)),
            "status_other": sum(int(codes.group(n)) for n in (2, 3, 4)), "cpu": cpu,
            "shape": f"{H2LOAD_CLIENTS} connections × {H2LOAD_STREAMS} streams, 1 thread"}  # fmt: skip


def wait_listening(port: int, child: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if child.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"nghttpd did not start:\n{tail(log)}")
        time.sleep(0.05)  # poll interval while nghttpd starts


def emulator_phase(
    stack: Stack, args: argparse.Namespace, kind: str, bad_percent: float, delay_ms: int
) -> dict[str, Any]:
    """(b)/(c)/(d) one scenario against a fresh emulator: `kind` is apns, aioapns, fcm or fcm-http2.

    Our APNs provider runs two passes when tokens are bad: the second sends the same devices again, when
    the provider already knows the bad tokens as dead and fails them without a request."""
    name = f"{kind}-bad{bad_percent:g}-delay{delay_ms}"
    fcm = kind.startswith("fcm")
    emulator, info = start_emulator(stack, "fcm" if fcm else "apns", f"emulator-{name}", delay_ms)
    passes = 2 if kind == "apns" and bad_percent > 0 else 1
    try:
        spec = {"kind": kind, "app": fcm_app(info) if fcm else apns_app(info), "server_pid": emulator.pid,
                "port": info["port"], "ca_file": info["ca_file"], "stats_file": info["stats_file"],
                "bad_percent": bad_percent, "passes": passes, "aioapns_connections": args.aioapns_connections}  # fmt: skip
        result = run_worker(stack, name, spec, args)
    finally:
        stack.stop(emulator)
    result |= {"kind": kind, "bad_percent": bad_percent, "delay_ms": delay_ms}
    for item in result["passes"]:
        known_dead = kind == "apns" and item["pass"] > 1
        item["verify"] = verify_pass(item, args.devices, bad_percent, fcm, known_dead)
    return result


def verify_pass(item: dict[str, Any], devices: int, bad_percent: float, fcm: bool, known_dead: bool) -> str:
    """`ok`, `partial` (the pass was cut off) or what does not match: every device has an outcome, the bad
    ones failed BadDeviceToken, and the emulator counted the same (a client that re-sends shows here).
    `known_dead`: ApnsProvider's second pass fails the tokens it already knows dead without asking, so the
    emulator must have rejected none."""
    if not item["complete"]:
        return "partial"
    bad = round(devices * bad_percent / 100)
    problems = []
    if item["sent"] != devices - bad or item["failed"].get(BAD_REASON, 0) != bad or item["deferred"]:
        problems.append(f"expected {devices - bad:,} sent and {bad:,} × {BAD_REASON}")
    server = item.get("server") or {}
    if server.get("accepted") != item["sent"]:
        problems.append(
            f"emulator accepted {server.get('accepted', 0):,}, client counted {item['sent']:,} sent"
        )
    if not fcm and server.get("rejected", {}).get(BAD_REASON, 0) != (0 if known_dead else bad):
        problems.append(f"emulator rejected {server.get('rejected', {}).get(BAD_REASON, 0):,} × {BAD_REASON}")
    return "; ".join(problems) or "ok"


def fcm_app(info: dict[str, Any]) -> dict[str, Any]:
    return {"app_id": APP_ID, "master_key": "bench-master-key",
            "fcm": {"service_account_file": info["service_account_file"], "url": info["url"],
                    "ca_file": info["ca_file"]}}  # fmt: skip


def fcm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pushgw.emulators.fcm") is not None


# ---------------------------------------------------------------- run


PHASES = ("sink", "apns", "aioapns", "fcm")


def scenarios(args: argparse.Namespace) -> list[tuple[str, float, int]]:
    """(kind, bad %, answer delay) in run order: per delay ours, aioapns, then FCM and its side experiment."""
    planned = []
    for delay_ms in args.delays:
        if "apns" in args.only:
            planned += [("apns", bad_percent, delay_ms) for bad_percent in args.bad_percents]
        if "aioapns" in args.only:
            planned += [("aioapns", bad_percent, delay_ms) for bad_percent in (0.0, max(args.bad_percents))]
        if "fcm" in args.only and fcm_available():
            planned += [("fcm", 0.0, delay_ms), ("fcm-http2", 0.0, delay_ms)]
    return planned


def run(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Every phase in order; `results` fills as phases end, so an interrupted run still reports them."""
    if "sink" in args.only:
        say("(a) sink: nghttpd + h2load ceiling, then ApnsProvider")
        results["sink"] = sink_phase(stack, args)
    if "fcm" in args.only and not fcm_available():
        say("FCM skipped: pushgw.emulators.fcm does not exist")
        results["fcm_skipped"] = "pushgw.emulators.fcm does not exist"
    for kind, bad_percent, delay_ms in scenarios(args):
        say(f"{kind} → emulator, {bad_percent:g} % bad tokens, answers +{delay_ms} ms")
        results["scenarios"].append(emulator_phase(stack, args, kind, bad_percent, delay_ms))


# ---------------------------------------------------------------- report


TITLES = {
    "apns": "ApnsProvider → APNs emulator (token auth, Apple-like throttle)",
    "aioapns": "aioapns 4 → the same APNs emulator (bench-only host/port patch, see AioapnsSender)",
    "fcm": "FcmProvider (httpx2) → FCM emulator",
    "fcm-http2": "side experiment: FcmProvider's messages over our Http2Pool → FCM emulator",
}


def find(results: dict[str, Any], kind: str, bad_percent: float, delay_ms: int) -> dict[str, Any] | None:
    return next((item for item in results["scenarios"]
                 if (item["kind"], item["bad_percent"], item["delay_ms"]) == (kind, bad_percent, delay_ms)), None)  # fmt: skip


def rate_of(item: dict[str, Any] | None, number: int = 1) -> float | None:
    if item is None or len(item["passes"]) < number:
        return None
    rate: float = item["passes"][number - 1]["rate"]
    return rate


def delay_label(delay_ms: int) -> str:
    return "loopback" if not delay_ms else f"answers +{delay_ms} ms"


def targets(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float | None, limit: float, unit: str = "/s") -> None:
        if value is not None:
            rows.append({"name": name, "value": f"{value:,.0f}{unit}", "pass": value >= limit})

    sink = results.get("sink")
    if sink:
        row(f"APNs ≥ {TARGET_APNS:,.0f} devices/s per worker (nghttpd sink)",
            sink["apns"]["passes"][0]["answered_rate"], TARGET_APNS)  # fmt: skip
    bad_percent = max(args.bad_percents)
    for delay_ms in args.delays:
        where = delay_label(delay_ms)
        clean = rate_of(find(results, "apns", 0.0, delay_ms))
        row(
            f"APNs ≥ {TARGET_APNS:,.0f} devices/s per worker (emulator, 0 % bad, {where})", clean, TARGET_APNS
        )
        row(f"FCM ≥ {TARGET_FCM:,.0f} devices/s per worker (emulator, {where})",
            rate_of(find(results, "fcm", 0.0, delay_ms)), TARGET_FCM)  # fmt: skip
        bad = find(results, "apns", bad_percent, delay_ms)
        for number, what in ((1, "bad tokens new"), (2, "bad tokens known dead → failed locally")):
            rate = rate_of(bad, number)
            if clean and rate is not None and bad_percent > 0:
                row(f"APNs {bad_percent:g} % bad ≥ {100 * TARGET_BAD_SHARE:.0f} % of clean ({what}, {where})",
                    100 * rate / clean, 100 * TARGET_BAD_SHARE, " %")  # fmt: skip
    return rows


def cpu_text(cpu: dict[str, float]) -> str:
    parts = "  ".join(f"{name} {value:.0f}" for name, value in cpu.items() if name != "machine")
    text = f"cpu % of one core: {parts}  (machine {cpu['machine']:.0f} of {100 * (os.cpu_count() or 1)})"
    if cpu.get("foreign", 0.0) > FOREIGN_CPU_WARNING:
        text += (
            f"\n        !!! other processes used {cpu['foreign']:.0f} % of a core: this phase is disturbed"
        )
    return text


def outcome_text(item: dict[str, Any]) -> str:
    parts = [f"sent {item['sent']:,}"]
    parts += [f"failed {reason} {count:,}" for reason, count in item["failed"].items()]
    parts += [f"deferred {reason} {count:,}" for reason, count in item["deferred"].items()]
    if not item["complete"]:
        parts.append(
            f"!!! cut off after {item['seconds']:.0f} s: {item['done']:,} of {item['devices']:,} done"
        )
    return ", ".join(parts)


def server_text(server: dict[str, Any] | None) -> str:
    if not server:
        return ""
    by_connection = ", ".join(f"{count:,}" for count in server.get("requests_by_connection", {}).values())
    throttles = f"throttles {server['throttles']:,}, " if "throttles" in server else ""
    return (f"\n        emulator: {server.get('requests', 0):,} requests, {server.get('accepted', 0):,} accepted, "
            f"{throttles}connections opened {server.get('connections_opened', 0)}, "
            f"requests per connection [{by_connection}]")  # fmt: skip


def pass_line(label: str, item: dict[str, Any], clean: float | None = None) -> str:
    ratio = f"  ({100 * item['rate'] / clean:.0f} % of clean)" if clean else ""
    verify = item.get("verify", "ok")
    check = "" if verify in ("ok", "partial") else f"\n        !!!!! COUNTS DO NOT MATCH: {verify} !!!!!"
    return (f"    {label:<34} {item['rate']:>9,.0f} devices/s{ratio}  in {item['seconds']:.2f} s{check}\n"
            f"        {outcome_text(item)}\n        {cpu_text(item['cpu'])}{server_text(item.get('server'))}")  # fmt: skip


def print_sink(sink: dict[str, Any]) -> None:
    ceiling, item = sink["ceiling"], sink["apns"]["passes"][0]
    print("(a) sink: nghttpd (C, TLS, 200 from an empty file per token) — ApnsProvider's own CPU cost")
    print(f"    ceiling, h2load {ceiling['shape']}: {ceiling['rate']:,.0f} req/s "
          f"({ceiling['status_2xx']:,} × 2xx, {ceiling['status_other']} other)\n        {cpu_text(ceiling['cpu'])}")  # fmt: skip
    print(pass_line("ApnsProvider", item))
    print(
        f"        answered {item['answered_rate']:,.0f}/s = {item['share_of_ceiling']} % of the h2load ceiling"
    )


def print_scenario(item: dict[str, Any], clean: float | None) -> None:
    for number, measured in enumerate(item["passes"], 1):
        label = f"{item['bad_percent']:g} % bad"
        if len(item["passes"]) > 1:
            label += " pass 1 (bad new)" if number == 1 else f" pass {number} (bad known)"
        print(pass_line(label, measured, clean if item["bad_percent"] else None))
    if "aioapns_connections_open" in item:
        print(f"        aioapns connections open at the end: {item['aioapns_connections_open']}")


def print_scenarios(results: dict[str, Any], args: argparse.Namespace) -> None:
    for delay_ms in args.delays:
        for kind, title in TITLES.items():
            items = [
                item for item in results["scenarios"] if (item["kind"], item["delay_ms"]) == (kind, delay_ms)
            ]
            if not items:
                continue
            print(f"{title}, {delay_label(delay_ms)}")
            clean = rate_of(find(results, kind, 0.0, delay_ms))
            for item in items:
                print_scenario(item, clean)
        print_comparison(results, max(args.bad_percents), delay_ms)


def print_comparison(results: dict[str, Any], bad_percent: float, delay_ms: int) -> None:
    lines = []
    for percent in sorted({0.0, bad_percent}):
        ours = rate_of(find(results, "apns", percent, delay_ms))
        theirs = rate_of(find(results, "aioapns", percent, delay_ms))
        if ours and theirs:
            lines.append(f"    {percent:g} % bad: ApnsProvider {ours:,.0f}/s vs aioapns {theirs:,.0f}/s "
                         f"= {ours / theirs:.1f} ×")  # fmt: skip
    httpx2, ours = (
        rate_of(find(results, "fcm", 0.0, delay_ms)),
        rate_of(find(results, "fcm-http2", 0.0, delay_ms)),
    )
    if httpx2 and ours:
        lines.append(f"    FCM: Http2Pool {ours:,.0f}/s vs httpx2 {httpx2:,.0f}/s = {ours / httpx2:.1f} ×")
    if lines:
        print(f"comparison, {delay_label(delay_ms)} (same emulator, same process model)")
        print("\n".join(lines))


def print_profiles(results: dict[str, Any]) -> None:
    workers = [("sink apns", results["sink"]["apns"])] if results.get("sink") else []
    workers += [
        (f"{item['kind']} {item['bad_percent']:g} % +{item['delay_ms']} ms", item)
        for item in results["scenarios"]
    ]
    for name, item in workers:
        profile = item.get("profile")
        if profile:
            print(f"profile {name}: {profile['samples']} samples, warm-up included ({profile['file']})")
            for key in ("self_percent", "inclusive_percent"):
                print(f"    {key.split('_')[0]:<9}  " + ", ".join(
                    f"{frame} {share}" for frame, share in list(profile[key].items())[:12]))  # fmt: skip


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\npushgw provider bench  ({results['config']['note']})")
    if not results["complete"]:
        print(
            "  !!!!! PARTIAL: the run was interrupted or failed; only the phases that ended are shown !!!!!"
        )
    if results.get("sink"):
        print_sink(results["sink"])
    print_scenarios(results, args)
    if results.get("fcm_skipped"):
        print(f"FCM skipped: {results['fcm_skipped']}")
    print_profiles(results)
    print(f"for reference, providers.md §1.5: aioapns {AIOAPNS_REFERENCE['clean']:,}/s clean, "
          f"{AIOAPNS_REFERENCE['bad5_throttle']}/s at 5 % bad with the throttle (30 ms RTT, 1 connection)")  # fmt: skip
    for row in results["targets"]:
        print(f"target  {'PASS' if row['pass'] else 'MISS'}  {row['name']}  ({row['value']})")
    print(f"summary {results['summary']}")


def summary(results: dict[str, Any]) -> str:
    rows = results["targets"]
    return f"{sum(row['pass'] for row in rows)}/{len(rows)} targets met"


# ---------------------------------------------------------------- main


def parse_list(kind: type) -> Any:
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--devices", type=int, default=50_000, help="devices per measured pass (default 50000)")
    add("--warmup", type=int, default=5_000, help="devices sent before measuring, per worker (default 5000)")
    add("--prefetch", type=int, default=4, help="units in flight, as worker.prefetch (default 4)")
    add("--batch", type=int, default=500, help="devices per unit, as worker.batch_size (default 500)")
    add(
        "--chunk",
        type=int,
        default=100,
        help="devices per provider.send, as worker.progress_chunk (default 100)",
    )
    add(
        "--bad-percents",
        type=parse_list(float),
        default=[0.0, 1.0, 5.0],
        help="APNs scenarios (default 0,1,5)",
    )
    add(
        "--only",
        type=parse_list(str),
        default=list(PHASES),
        help=f"phases to run (default {','.join(PHASES)})",
    )
    add("--max-seconds", type=float, default=60.0, help="a pass takes no new units after S s (default 60)")
    add(
        "--h2load-requests",
        type=int,
        default=200_000,
        help="requests of the h2load ceiling run (default 200000)",
    )
    add(
        "--aioapns-connections",
        type=int,
        default=10,
        help="aioapns max_connections (default 10, its default)",
    )
    add("--delays", type=parse_list(int), default=[0, 30], metavar="MS,…",
        help="run the emulator scenarios once per value, the emulators answering every request that many ms "
             "late: a stand-in for the RTT to Apple/Google (default 0,30)")  # fmt: skip
    add("--seed", type=int, default=20_240_601, help="token generator seed")
    add("--wait-quiet", type=float, default=0.0, metavar="S", help="first wait up to S s for an idle machine")
    add("--profile", type=Path, metavar="DIR", help="py-spy every worker process (raw stacks in DIR)")
    add("--keep-logs", type=Path, metavar="DIR", help="copy the children's logs, specs and results to DIR")
    add("--json", action="store_true", help="end with one JSON object holding every number")
    add("--role", choices=["worker", "emulator"], help=argparse.SUPPRESS)
    add("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {','.join(PHASES)}")
    if 0.0 not in args.bad_percents:
        args.bad_percents = [0.0, *args.bad_percents]
    return args


def run_all(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> int | None:
    """Run, then stop every child and remove the temp dir whatever happened; an exit code if it stopped early."""
    try:
        run(stack, args, results)
    except KeyboardInterrupt:
        say("interrupted: stopping everything this bench started")
        return 130
    except (BenchError, OSError, subprocess.SubprocessError, ValueError) as error:
        say(f"FAILED: {type(error).__name__}: {error}")
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # teardown is bounded; let it finish
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop_all()
        keep_logs(stack.tmp, args.keep_logs, ("*.log", "*.json"), say)
        shutil.rmtree(stack.tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "worker":
        return run_worker_role(args.spec)
    if args.role == "emulator":
        return run_emulator_role(args.spec)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (SIG_IGN)
    busy_before = wait_for_quiet(args.wait_quiet, say)
    stack = Stack(Path(tempfile.mkdtemp(prefix="pushgw-providers-")))
    note = (f"{args.devices:,} devices per pass after {args.warmup:,} warm-up; prefetch {args.prefetch} × batch "
            f"{args.batch}, chunks of {args.chunk}; one uvloop worker process; the server in its own process; "
            f"{os.cpu_count()} cores; machine busy before start {busy_before:.0f} % of a core")  # fmt: skip
    config = {key: value for key, value in vars(args).items() if key not in ("role", "spec")}
    results: dict[str, Any] = {"config": config | {"note": note}, "scenarios": []}
    stopped = run_all(stack, args, results)
    if stopped is not None and not results.get("sink") and not results["scenarios"]:
        return stopped
    results["complete"] = stopped is None
    results["targets"] = targets(results, args)
    results["summary"] = summary(results)
    print_report(results, args)
    if args.json:
        print(json.dumps(json_safe(results), separators=(",", ":")))
    if stopped is not None:
        return stopped
    ours = [
        item for item in results["scenarios"] if item["kind"] != "aioapns"
    ]  # aioapns' mismatches are findings
    verified = all(measured["verify"] in ("ok", "partial") for item in ours for measured in item["passes"])
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())
