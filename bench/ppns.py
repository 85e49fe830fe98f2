"""PPNS node benchmark: N idle device connections on one real `pushgw ppns` node (issue 5).

The node runs `[ppns] processes = ceil(N / 18,000)` processes (`--node-processes`; docs/ppns.md: one port,
SO_REUSEPORT, node ids `<id>-<k>`, metrics on `metrics_port + k`) and the load generator ceil(N / 18,000)
processes, so no process needs more than ~18,000 descriptors (this container's hard RLIMIT_NOFILE is 20,000
per process). Memory is summed over every process of the node (supervisor + children), connection gauges
over every metrics port, the receive counts over every load generator.

One run, one process tree (every child is started here and stopped on every exit path, Ctrl-C included):
  1. a SecantusDB (temp storage), a test CA and server certificate (`write_server_certificates`);
  2. per mode (`tls`: the node terminates TLS itself; `plain`: `plain_tcp = true`, what runs behind a TLS
     terminator such as nginx `stream`): start `pushgw ppns` (RLIMIT_NOFILE raised in that child only),
     read its RSS/PSS, then start the load generator, a separate uvloop process (this file with
     `--loadgen`, one per ≤ 18,000 devices) that open N device connections from several 127.0.0.x source
     addresses (≤ 20,000 each), send a handshake
     + `{}` each (TLS via ssl.MemoryBIO, so the generator does not pay asyncio's 256 KiB TLS buffers) and
     reads lines, recording the receive time of every push;
  3. idle memory: once the node's `pushgw_ppns_connections` gauge reaches N and has settled, RSS and PSS of
     every process of the node (the node and its children) again: (after − before) / N per connection;
  4. broadcast: one push sent to every connected installation through the fleet's `PpnsProvider.send`
     (from this process, in worker-sized batches of `--batch-size`, `--store-concurrency` batches at once):
     one log entry per batch (one transaction per group of concurrent batches) + one message per batch to
     every node through RabbitMQ (`--amqp-url`; each node consumes its queue, bound to the entries
     exchange). Time from the first store to the last device receiving it (and the store time alone);
  5. (run before 4) single-push latency under that load: `--samples` pushes to random installations, one at
     a time through `PpnsProvider.send`; latency = the device's receive time − the start of `send` (store
     and live message included; `after_sent_*`: − its return, when the provider counts it `Sent`);
  6. print the targets with PASS/MISS, `--json` adds one object with every number.

Run: `.venv/bin/python bench/ppns.py [--connections 1000,10000,50000] [--modes tls,plain] [--samples 200]
[--poll-interval-s 5] [--hold-s 300] [--amqp-url amqp://…] [--json] [--keep-logs DIR]`. Needs RabbitMQ (default
127.0.0.1:5672; `--amqp-url ""` runs the node without a broker: polling only), root or a hard RLIMIT_NOFILE
above N (the children raise their own limits) and, above ~25,000 connections, several source addresses
(automatic).

KEEPALIVE: the node runs with pushgw's default `tcp_keepalive_idle_s = 60` (`--tcp-keepalive-idle-s`). On
loopback every keep-alive probe and its ACK pass the kernel's per-CPU input backlog
(`net.core.netdev_max_backlog`, 1,000 here). Before each connection's idle time got ± 25 % of jitter, the
probes of connections opened within the same few seconds fired in the same timer tick, thousands at once,
most were dropped (`/proc/net/softnet_stat`), the same group was probed again 20 s later in one burst again,
and after `write_timeout_s` (TCP_USER_TIMEOUT, 120 s) the kernel aborted them (TCPAbortOnTimeout: ~9,000 of
50,000 in one run; the bench then used 3600). With the jitter, 50,000 connections idled 300 s
(`--hold-s 300`) with 0 aborts. The run prints the kernel's drops and aborts (`kernel:`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from harness import BenchError, free_port, machine_busy_seconds, rabbitmq_pid, raise_interrupt

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

APP_ID = "benchapp"
DATABASE = "bench_ppns"
PER_SOURCE_ADDRESS = 20_000  # well inside the 28k ephemeral ports of one source address
PER_PROCESS = 18_000  # sockets per load generator / node process: under a hard RLIMIT_NOFILE of 20,000
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
NOFILE = 400_000
TARGETS = {"connections": 50_000, "kib_per_connection": 16.0, "broadcast_s": 5.0, "p99_ms": 50.0}
IP_BIND_ADDRESS_NO_PORT = 24


def say(text: str) -> None:
    print(f"[ppns {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def raise_nofile() -> None:
    """In a child only: enough descriptors for N sockets (root may raise the hard limit)."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------- load generator (child process)


class Device(asyncio.Protocol):
    """One emulated device: handshake + ping, then every push line's receive time."""

    def __init__(self, gen: LoadGen, installation_id: str) -> None:
        self.gen, self.installation_id = gen, installation_id
        self.transport: asyncio.Transport | None = None
        self.tls: ssl.SSLObject | None = None
        self.incoming = None if gen.context is None else ssl.MemoryBIO()
        self.outgoing = None if gen.context is None else ssl.MemoryBIO()
        self.handshaken = False
        self.buffer = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def hello(self) -> bytes:
        return (
            f'{{"installation_id":"{self.installation_id}","oauth_key":"{APP_ID}","v":"e1.0.0","last":null}}'
            "\n{}\n"
        ).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport
        if self.gen.context is None:
            transport.write(self.hello())
            return
        assert self.incoming is not None and self.outgoing is not None
        self.tls = self.gen.context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        self._tls_step()

    def _flush(self) -> None:
        assert self.outgoing is not None and self.transport is not None
        pending = self.outgoing.read()
        if pending:
            self.transport.write(pending)

    def _tls_step(self) -> None:
        assert self.tls is not None and self.incoming is not None
        if not self.handshaken:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            self.handshaken = True
            self.tls.write(self.hello())
        chunks = []
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        self._flush()
        if chunks:
            self._lines(b"".join(chunks))

    def data_received(self, data: bytes) -> None:
        if self.tls is None:
            self._lines(data)
            return
        assert self.incoming is not None
        self.incoming.write(data)
        try:
            self._tls_step()
        except ssl.SSLError as error:
            self.gen.errors[type(error).__name__] = self.gen.errors.get(type(error).__name__, 0) + 1
            assert self.transport is not None
            self.transport.abort()

    def _lines(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"{}"):
                if not self.ready.done():
                    self.ready.set_result(None)
                continue
            start = line.find(b'"push_id":"')
            if start >= 0:
                self.gen.received(line[start + 11 : start + 21].decode(), now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"lost before pong: {exc!r}"))


@dataclass
class LoadGen:
    port: int
    context: ssl.SSLContext | None
    prefix: str
    pushes: dict[str, list[float]] = field(default_factory=dict)  # push_id → [count, first, last]
    errors: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    devices: list[Device] = field(default_factory=list)

    def received(self, push_id: str, now: float) -> None:
        entry = self.pushes.get(push_id)
        if entry is None:
            self.pushes[push_id] = [1, now, now]
        else:
            entry[0] += 1
            entry[2] = now

    async def connect_one(self, index: int, limit: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        async with limit:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((f"127.0.0.{2 + index // PER_SOURCE_ADDRESS}", 0))
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
            except OSError as error:
                sock.close()
                self.errors[f"connect:{error.strerror}"] = self.errors.get(f"connect:{error.strerror}", 0) + 1
                return
            device = Device(self, f"{self.prefix}{index:07d}")
            await loop.create_connection(lambda: device, sock=sock)
            self.devices.append(device)
            try:
                async with asyncio.timeout(30):
                    await device.ready
            except (TimeoutError, ConnectionError) as error:
                self.errors[type(error).__name__] = self.errors.get(type(error).__name__, 0) + 1

    async def report(self, push_ids: list[str], expect: int, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.pushes.get(p, [0])[0] >= expect for p in push_ids):
                break
            await asyncio.sleep(0.01)  # poll interval, up to the deadline above
        return {p: self.pushes.get(p, [0, None, None]) for p in push_ids}


async def loadgen_main(args: argparse.Namespace) -> None:
    """Commands on stdin, one JSON object per line; answers on stdout, one JSON object per line."""
    context = None
    if args.ca_file:
        context = ssl.create_default_context(cafile=args.ca_file)
        context.set_alpn_protocols(["http/1.1"])
    gen = LoadGen(args.port, context, args.prefix)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    limit = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()
    await asyncio.gather(*(gen.connect_one(i, limit) for i in range(args.offset, args.offset + args.count)))
    ready = sum(
        1 for d in gen.devices if d.ready.done() and not d.ready.cancelled() and d.ready.exception() is None
    )
    answer(
        {"event": "connected", "ready": ready, "seconds": time.monotonic() - started, "errors": gen.errors}
    )
    while line := await reader.readline():
        command = json.loads(line)
        if command["cmd"] == "report":
            pushes = await gen.report(command["push_ids"], command["expect"], command["timeout_s"])
            answer({"event": "report", "pushes": pushes, "lost": gen.lost, "errors": gen.errors})
        elif command["cmd"] == "stats":
            answer({"event": "stats", "rss_kib": rss_pss(os.getpid())[0], "lost": gen.lost})
    for device in gen.devices:
        if device.transport is not None:
            device.transport.abort()


def answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- orchestrator


def rss_pss(pid: int) -> tuple[int, int]:
    """RSS and PSS in KiB (smaps_rollup)."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if parts and parts[0] in ("Rss:", "Pss:"):
                values[parts[0]] = int(parts[1])
    return values.get("Rss:", 0), values.get("Pss:", 0)


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_memory(pid: int) -> dict[str, int]:
    rss = pss = 0
    pids = process_tree(pid)
    for each in pids:
        with contextlib.suppress(OSError):
            r, p = rss_pss(each)
            rss, pss = rss + r, pss + p
    return {"rss_kib": rss, "pss_kib": pss, "processes": len(pids)}


def sockstat_tcp_pages() -> int:
    """Kernel TCP buffer memory (pages, both ends of loopback): not part of any RSS."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()
            return int(parts[parts.index("mem") + 1])
    return 0


DISTURBED_PERCENT = 20.0  # % of a core used by processes this bench did not start (RabbitMQ aside)


class Foreign:
    """CPU the rest of the machine used during a phase (everything but this bench's process tree and
    RabbitMQ), in % of one core: above DISTURBED_PERCENT the phase is flagged as disturbed."""

    def __init__(self) -> None:
        self._wall, self._machine, self._own = time.monotonic(), machine_busy_seconds(), self._own_cpu()

    @staticmethod
    def _own_cpu() -> float:
        rabbit = rabbitmq_pid()
        return cpu_s(process_tree(os.getpid()) + ([rabbit] if rabbit else []))

    def percent(self) -> float:
        wall = max(1e-6, time.monotonic() - self._wall)
        machine, own = machine_busy_seconds() - self._machine, self._own_cpu() - self._own
        return round(100 * max(0.0, machine - own) / wall, 1)

    def say(self, phase: str, result: dict[str, Any]) -> None:
        foreign = self.percent()
        result.setdefault("foreign_cpu_percent", {})[phase] = foreign
        if foreign > DISTURBED_PERCENT:
            say(
                f"  !!! other processes used {foreign:.0f} % of a core during {phase}: this phase is disturbed"
            )


def kernel_drops() -> dict[str, int]:
    """Packets the kernel dropped from its per-CPU input backlog (loopback traffic passes it:
    `net.core.netdev_max_backlog`) and connections it aborted on a timeout (retransmissions, keep-alive
    probes, TCP_USER_TIMEOUT), since boot."""
    softnet = sum(
        int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines()
    )
    lines = Path("/proc/net/netstat").read_text().splitlines()
    tcp_ext = dict(zip(lines[0].split()[1:], lines[1].split()[1:], strict=True))
    return {"softnet_dropped": softnet, "tcp_abort_on_timeout": int(tcp_ext.get("TCPAbortOnTimeout", 0))}


@dataclass
class Stack:
    tmp: Path
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    mongo_uri: str = ""
    node_pid: int = 0
    queue_prefix: str = field(default_factory=lambda: f"bench{random.randrange(16**8):08x}")

    def spawn(self, args: list[str], log: Path, *, pipes: bool = False) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                args, stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else out, stderr=out if pipes else subprocess.STDOUT,
                cwd=REPO, start_new_session=True,
            )  # fmt: skip
        self.children.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def stop_all(self) -> None:
        for process in reversed(self.children):
            self.stop(process)
        self.children.clear()


async def wait_until(check: Any, what: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if process.poll() is not None:
            raise BenchError(f"{what}: process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(0.2)  # poll interval, up to the deadline above


async def wait_quiet(
    node: subprocess.Popen[bytes], what: str, timeout_s: float = 120.0, also: tuple[int, ...] = ()
) -> None:
    """Poll until the node (and the processes in `also`, e.g. the database its connections' claims and
    first replays wait for) used under 5 % of a core each over a 0.5 s window: memory and latency are
    measured on an idle node, never after a guessed pause."""
    deadline = time.monotonic() + timeout_s
    pids = [*process_tree(node.pid), *also]  # `processes > 1`: the supervisor and every node process
    while True:
        before, started = [cpu_s([pid]) for pid in pids], time.monotonic()
        await asyncio.sleep(0.5)  # the sampling window of the CPU measurement, not a synchronisation guess
        elapsed = time.monotonic() - started
        if all((cpu_s([pid]) - b) / elapsed < 0.05 for pid, b in zip(pids, before, strict=True)):
            return
        if node.poll() is not None:
            raise BenchError(f"{what}: process exited with {node.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: still busy after {timeout_s:.0f} s")


def metric_sum(ports: list[int], name: str) -> float | None:
    """`name` summed over the node processes' metrics ports; None while one does not answer."""
    total = 0.0
    for port in ports:
        value = metric(port, name)
        if value is None:
            return None
        total += value
    return total


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def start_secantus(stack: Stack, args: argparse.Namespace) -> None:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    port = free_port()
    storage = stack.tmp / "mongo"
    storage.mkdir()
    process = stack.spawn(
        [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
         "--storage-path", str(storage), "--log-level", "WARNING"],
        stack.tmp / "secantus.log",
    )  # fmt: skip
    # SecantusDB keeps the reply of every retryable write and, past 10,000 of them, scans and sorts them all
    # on every write (secantus/transactions.py `_prune_retryable_locked`): from ~10,000 devices on, the
    # claims and stores would measure that, not pushgw. `--mongo-retry-writes` keeps the driver's default.
    retry = "" if args.mongo_retry_writes else "?retryWrites=false"
    stack.mongo_uri = f"mongodb://127.0.0.1:{port}/{retry}"
    probe: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=250)

    def pings() -> bool:
        try:
            probe.admin.command("ping")
        except PyMongoError:
            return False
        return True

    try:
        await wait_until(pings, "SecantusDB", process, START_TIMEOUT_S)
    finally:
        probe.close()


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports (the node processes' metrics ports: port + k)."""
    for _ in range(100):
        first = free_port()
        try:
            for k in range(1, count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", first + k))
        except OSError:
            continue
        return first
    raise BenchError(f"no {count} consecutive free ports")


def write_config(
    stack: Stack, mode: str, port: int, metrics_port: int, processes: int, args: argparse.Namespace
) -> Path:
    path = stack.tmp / f"pushgw-{mode}.toml"
    tls = ""
    if mode == "tls":
        tls = f'cert_file = "{stack.tmp / "tls" / "server.pem"}"\nkey_file = "{stack.tmp / "tls" / "server-key.pem"}"\n'
    path.write_text(
        f'[mongo]\nuri = "{stack.mongo_uri}"\ntimeout_ms = 30000\n\n'
        f'[ppns]\nhost = "127.0.0.1"\nport = {port}\nmetrics_port = {metrics_port}\nprocesses = {processes}\n'
        f"plain_tcp = {'false' if mode == 'tls' else 'true'}\n{tls}"
        f"poll_interval_s = {args.poll_interval_s}\nhandshake_timeout_s = 30\n"
        f"tcp_keepalive_idle_s = {args.tcp_keepalive_idle_s}\n\n"
        + (f'[queue]\nurl = "{args.amqp_url}"\nprefix = "{stack.queue_prefix}"\n\n' if args.amqp_url else "")
        + '[log]\nlevel = "warning"\n\n'
        f'[[apps]]\napp_id = "{APP_ID}"\nmaster_key = "master"\nmongo_database = "{DATABASE}"\n'
    )
    return path


class LoadGenClient:
    """One load generator process (its own ≤ PER_PROCESS connections)."""

    def __init__(self, stack: Stack, process: subprocess.Popen[bytes]) -> None:
        self.stack, self.process = stack, process

    async def read(self, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), timeout_s)
        if not line:
            raise BenchError(f"load generator exited ({self.process.poll()})")
        message: dict[str, Any] = json.loads(line)
        return message

    async def ask(self, command: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()
        return await self.read(timeout_s)


class LoadGenPool:
    """Every load generator process of a run, asked and answered as one."""

    def __init__(self, stack: Stack, processes: list[subprocess.Popen[bytes]]) -> None:
        self.stack = stack
        self.members = [LoadGenClient(stack, process) for process in processes]

    async def connected(self, timeout_s: float) -> dict[str, Any]:
        answers = await asyncio.gather(*(member.read(timeout_s) for member in self.members))
        return {
            "event": "connected",
            "ready": sum(a["ready"] for a in answers),
            "seconds": max(a["seconds"] for a in answers),
            "errors": merge_counts([a["errors"] for a in answers]),
            "per_process": [a["ready"] for a in answers],
        }

    async def stats(self) -> dict[str, Any]:
        answers = await asyncio.gather(*(member.ask({"cmd": "stats"}, 30) for member in self.members))
        return {"event": "stats", "rss_kib": sum(a["rss_kib"] for a in answers),
                "lost": sum(a["lost"] for a in answers), "processes": len(answers)}  # fmt: skip

    async def report(self, push_ids: list[str], expect: int, timeout_s: float) -> dict[str, Any]:
        """Receive counts summed over the processes (a push's devices may be on any of them): polls
        every process (each answers at once) until every push reached `expect` devices or `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        command = {"cmd": "report", "push_ids": push_ids, "expect": 0, "timeout_s": 0}
        while True:
            answers = await asyncio.gather(*(member.ask(command, 60) for member in self.members))
            pushes: dict[str, list[Any]] = {}
            for push_id in push_ids:
                seen = [a["pushes"][push_id] for a in answers if a["pushes"][push_id][0]]
                pushes[push_id] = (
                    [sum(e[0] for e in seen), min(e[1] for e in seen), max(e[2] for e in seen)]
                    if seen
                    else [0, None, None]
                )
            if all(pushes[p][0] >= expect for p in push_ids) or time.monotonic() > deadline:
                return {
                    "event": "report",
                    "pushes": pushes,
                    "lost": sum(a["lost"] for a in answers),
                    "errors": merge_counts([a["errors"] for a in answers]),
                }
            await asyncio.sleep(0.02)  # poll interval, up to the deadline above


def merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for each in counts:
        for key, value in each.items():
            merged[key] = merged.get(key, 0) + value
    return merged


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def provider_batch(app_id: str, push_id: str, ids: list[str], alert: str) -> tuple[Any, list[Any]]:
    """A PushContext and the Notifications of one worker batch, as the sender hands them to the provider."""
    from pushgw.messages import Device
    from workers.providers.provider import Notification, PushContext

    push = PushContext(app_id=app_id, push_id=push_id, options={}, expiry_ms=None)
    devices = [Device(object_id=i, device_type="embedded", transport="ppns", installation_id=i) for i in ids]
    return push, [Notification(device, {"alert": alert}) for device in devices]


async def store_all(provider: Any, ids: list[str], push_id: str, batch: int, concurrency: int) -> float:
    """Send one push to every installation through PpnsProvider.send, in worker-sized batches
    (`--batch-size`, `--store-concurrency` batches at once): one log entry and one live message to every
    node per batch; seconds taken."""
    limit = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(chunk: list[str]) -> None:
        async with limit:
            push, notifications = provider_batch(APP_ID, push_id, chunk, "broadcast")
            await provider.send(push, notifications)

    await asyncio.gather(*(one(ids[i : i + batch]) for i in range(0, len(ids), batch)))
    return time.monotonic() - started


async def measure_idle(
    node: subprocess.Popen[bytes], metrics_ports: list[int], count: int, database_pid: int
) -> dict[str, Any]:
    """Wait for `count` registered connections, let claims and first replays settle (node and database
    idle: a connection counts as registered before its claim is written), read memory."""
    await wait_until(
        lambda: (metric_sum(metrics_ports, "pushgw_ppns_connections") or 0) >= count,
        "registered connections", node, max(60.0, count / 200),
    )  # fmt: skip
    await wait_quiet(
        node, "the node settling (claims and first replays)", max(300.0, count / 50), (database_pid,)
    )
    memory = tree_memory(node.pid)
    memory["connections"] = metric_sum(metrics_ports, "pushgw_ppns_connections")
    memory["per_process"] = [metric(port, "pushgw_ppns_connections") for port in metrics_ports]
    return memory


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def run_mode(
    stack: Stack, mode: str, count: int, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    from pushgw.mongo import create_client
    from pushgw.settings import load_settings
    from workers.providers.ppns import PpnsProvider

    node_processes = args.node_processes or max(1, math.ceil(count / PER_PROCESS))
    port, metrics_port = free_port(), free_port_run(node_processes)
    metrics_ports = [metrics_port + k for k in range(node_processes)]
    config = write_config(stack, mode, port, metrics_port, node_processes, args)
    log = stack.tmp / f"node-{mode}-{count}.log"
    node = stack.spawn([sys.executable, "-m", "pushgw.cli", "ppns", "--config", str(config)], log)
    await wait_until(
        lambda: metric_sum(metrics_ports, "pushgw_ppns_connections") is not None,
        "pushgw ppns",
        node,
        START_TIMEOUT_S,
    )
    await wait_quiet(node, "the node idling after start")
    before = tree_memory(node.pid)
    tcp_before, drops_before = sockstat_tcp_pages(), kernel_drops()
    prefix = f"{mode[0]}{count}-"
    generators = max(1, math.ceil(count / PER_PROCESS))
    share = math.ceil(count / generators)
    processes = []
    for k, offset in enumerate(range(0, count, share)):
        argv = [sys.executable, str(SCRIPT), "--loadgen", "--port", str(port), "--offset", str(offset),
                "--count", str(min(share, count - offset)), "--prefix", prefix,
                "--concurrency", str(max(1, args.connect_concurrency // generators))]  # fmt: skip
        if mode == "tls":
            argv += ["--ca-file", str(stack.tmp / "tls" / "ca.pem")]
        processes.append(stack.spawn(argv, stack.tmp / f"loadgen-{mode}-{count}-{k}.log", pipes=True))
    gen = LoadGenPool(stack, processes)
    result["node_before"] = before
    result["node_processes"], result["loadgen_processes"] = node_processes, len(processes)
    stack.node_pid = node.pid
    say(f"{mode} {count}: node of {node_processes} process(es), {len(processes)} load generator(s)")
    try:
        foreign = Foreign()
        connected = await gen.connected(timeout_s=max(120.0, count / 100))
        result["connect"] = connected
        say(
            f"{mode} {count}: {connected['ready']} ready in {connected['seconds']:.1f} s {connected['errors']}"
            f" (per load generator {connected['per_process']})"
        )
        idle = await measure_idle(node, metrics_ports, connected["ready"], stack.children[0].pid)
        foreign.say("connect and settle", result)
        say(f"{mode} {count}: idle, node processes hold {idle['per_process']}, {idle['processes']} processes")
        result["node_idle"] = idle
        result["kernel_tcp_kib"] = max(0, sockstat_tcp_pages() - tcp_before) * 4
        ready = max(1, connected["ready"])
        result["kib_per_connection_rss"] = (idle["rss_kib"] - before["rss_kib"]) / ready
        result["kib_per_connection_pss"] = (idle["pss_kib"] - before["pss_kib"]) / ready
        result["loadgen"] = await gen.stats()
        client = create_client(stack.mongo_uri, 30_000)
        provider = PpnsProvider(load_settings(config), client)
        try:
            ids = [f"{prefix}{i:07d}" for i in range(count)]
            # latency first: after a broadcast the node may still be working through it
            foreign = Foreign()
            await latency(gen, provider, ids, result, args)
            foreign.say("latency", result)
            foreign = Foreign()
            await broadcast(gen, provider, ids, ready, result, args)
            foreign.say("broadcast", result)
            if args.hold_s:
                await hold(node, metrics_ports, ready, args.hold_s, result)
            after = kernel_drops()
            result["kernel_drops"] = {key: after[key] - drops_before[key] for key in after}
            say(f"  kernel: {result['kernel_drops']} (loopback packets dropped, connections aborted)")
        finally:
            await provider.close()
            await client.close()
    finally:
        for process in processes:
            stack.stop(process)
        stack.stop(node)
        stack.children = [c for c in stack.children if c not in (*processes, node)]


async def hold(
    node: subprocess.Popen[bytes], metrics_ports: list[int], ready: int, hold_s: float, result: dict[str, Any]
) -> None:
    """Leave every device idle for `hold_s` (keep-alive probes only), then count the connections the node
    still holds: aborted idle connections show here (and in the kernel's counters)."""
    say(f"  holding {ready:,} idle connections for {hold_s:.0f} s")
    await asyncio.sleep(hold_s)  # the measuring window itself
    if node.poll() is not None:
        raise BenchError(f"holding idle connections: the node exited with {node.returncode}")
    held = metric_sum(metrics_ports, "pushgw_ppns_connections") or 0
    result["hold"] = {"seconds": hold_s, "held": held, "of": ready}
    say(f"  after {hold_s:.0f} s idle the node holds {held:,.0f} of {ready:,} connections")


async def broadcast(
    gen: LoadGenPool,
    provider: Any,
    ids: list[str],
    ready: int,
    result: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    push_id = f"B{random.randrange(10**9):09d}"
    stack = gen.stack
    groups = [[stack.children[0].pid], process_tree(stack.node_pid)]  # SecantusDB, every node process
    cpu_before = [cpu_s(group) for group in groups]
    started = time.time()
    store_s = await store_all(provider, ids, push_id, args.batch_size, args.store_concurrency)
    report = await gen.report([push_id], ready, args.broadcast_timeout_s)
    cpu = [cpu_s(group) - before for group, before in zip(groups, cpu_before, strict=True)]
    received, _first, last = report["pushes"][push_id]
    result["broadcast"] = {
        "store_s": store_s,
        "received": received,
        "total_s": (last - started) if last else None,
        "after_stored_s": (last - started - store_s) if last else None,
        "lost": report["lost"],
        "cpu_s_secantus": cpu[0],
        "cpu_s_node": cpu[1],
        "wall_s": time.time() - started,
    }
    say(f"  broadcast: {received}/{ready} received, {result['broadcast']}")


async def latency(
    gen: LoadGenPool, provider: Any, ids: list[str], result: dict[str, Any], args: argparse.Namespace
) -> None:
    """Single pushes through PpnsProvider.send (one-device batches); latency = device receive − the
    *start* of `send` (store + live message included), and − its return (the provider counted it Sent)."""
    started: dict[str, float] = {}
    returned: dict[str, float] = {}
    for n in range(args.samples):
        push_id = f"L{n:04d}{random.randrange(10**5):05d}"
        push, notifications = provider_batch(APP_ID, push_id, [random.choice(ids)], "one")
        started[push_id] = time.time()
        await provider.send(push, notifications)
        returned[push_id] = time.time()
        await asyncio.sleep(random.uniform(0.005, 0.03))  # paces the samples: a trickle, not a burst
    report = await gen.report(list(started), 1, 20)
    values = [(report["pushes"][p][1] - t) * 1000 for p, t in started.items() if report["pushes"][p][1]]
    after_sent = [(report["pushes"][p][1] - t) * 1000 for p, t in returned.items() if report["pushes"][p][1]]
    result["latency_ms"] = {
        "samples": len(values),
        "missing": len(started) - len(values),
        "p50": percentile(values, 0.5) if values else None,
        "p99": percentile(values, 0.99) if values else None,
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
        "after_sent_p50": percentile(after_sent, 0.5) if after_sent else None,
        "after_sent_p99": percentile(after_sent, 0.99) if after_sent else None,
    }
    say(f"  latency: {result['latency_ms']}")


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        label = f"{run['mode']} {run['connections']:,}"
        ready = run.get("connect", {}).get("ready", 0)
        rows.append({"name": f"{label}: connections ≥ {TARGETS['connections']:,}", "value": ready,
                     "pass": ready >= TARGETS["connections"]})  # fmt: skip
        if "kib_per_connection_rss" in run:
            kib = run["kib_per_connection_rss"]
            rows.append({"name": f"{label}: node RSS per idle connection ≤ 16 KiB", "value": f"{kib:.1f} KiB",
                         "pass": kib <= TARGETS["kib_per_connection"]})  # fmt: skip
        total = run.get("broadcast", {}).get("total_s")
        if "broadcast" in run:
            scaled = None if total is None else total * TARGETS["connections"] / max(1, ready)
            ok = (
                total is not None
                and run["broadcast"]["received"] >= ready
                and total <= TARGETS["broadcast_s"]
            )
            rows.append({"name": f"{label}: broadcast to all ≤ 5 s", "pass": ok,
                         "value": f"{run['broadcast']['received']:,}/{ready:,} received, last after {total:.2f} s"
                         + (f" (×{TARGETS['connections'] / max(1, ready):.0f} = {scaled:.1f} s at 50k)" if ok or
                            run["broadcast"]["received"] >= ready else " (cut off)")
                         if total else "none received"})  # fmt: skip
        p99 = run.get("latency_ms", {}).get("p99")
        if "latency_ms" in run:
            rows.append({"name": f"{label}: single push p99 ≤ 50 ms", "value": f"{p99:.1f} ms" if p99 else "-",
                         "pass": p99 is not None and p99 <= TARGETS["p99_ms"]})  # fmt: skip
    return rows


def print_report(runs: list[dict[str, Any]]) -> None:
    print(
        "mode   conns   ready  conn_s  RSS_KiB/c  PSS_KiB/c  node_RSS_MiB  kern_TCP_MiB  store_s  bcast_s  p50_ms  p99_ms"
    )
    for run in runs:
        b, lat, idle = run.get("broadcast", {}), run.get("latency_ms", {}), run.get("node_idle", {})

        def num(value: Any, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        print(
            f"{run['mode']:<6} {run['connections']:>6} {run.get('connect', {}).get('ready', 0):>6} "
            f"{num(run.get('connect', {}).get('seconds'), '7.1f')} {num(run.get('kib_per_connection_rss'), '10.1f')} "
            f"{num(run.get('kib_per_connection_pss'), '10.1f')} {num(idle.get('rss_kib', 0) / 1024, '13.0f')} "
            f"{num(run.get('kernel_tcp_kib', 0) / 1024, '13.0f')} {num(b.get('store_s'), '8.2f')} "
            f"{num(b.get('total_s'), '8.2f')} {num(lat.get('p50'), '7.1f')} {num(lat.get('p99'), '7.1f')}"
        )
    for row in targets(runs):
        print(f"target  {'PASS' if row['pass'] else 'MISS'}  {row['name']}  ({row['value']})")


async def run(stack: Stack, args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    from pushgw.emulators.tls import write_server_certificates

    write_server_certificates(stack.tmp / "tls")
    await start_secantus(stack, args)
    for count in args.connections:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        node_share = math.ceil(count / (args.node_processes or max(1, math.ceil(count / PER_PROCESS))))
        per_process = max(node_share, math.ceil(count / max(1, math.ceil(count / PER_PROCESS))))
        if per_process + 200 > limit:
            say(f"RLIMIT_NOFILE is {limit:,} (hard limit; raising it needs CAP_SYS_RESOURCE): a node or load")
            say(f"generator process cannot hold {per_process:,} sockets, expect EMFILE")
        for mode in args.modes:
            say(f"{mode}: {count:,} connections")
            result: dict[str, Any] = {"mode": mode, "connections": count}
            runs.append(result)
            await run_mode(stack, mode, count, args, result)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--connections", default="1000,10000", type=lambda s: [int(x) for x in s.split(",")])
    add("--modes", default="tls,plain", type=lambda s: s.split(","))
    add("--samples", type=int, default=200)
    add("--poll-interval-s", type=float, default=30.0, help="the node's safety-net sweep")
    add(
        "--amqp-url",
        default="amqp://guest:guest@127.0.0.1:5672/",
        help="RabbitMQ for the node queues (live path); empty: no broker, the node polls",
    )
    add("--batch-size", type=int, default=500, help="devices per provider batch (worker.batch_size)")
    add("--store-concurrency", type=int, default=2, help="provider batches in flight")
    add("--broadcast-timeout-s", type=float, default=120.0)
    add(
        "--mongo-retry-writes",
        action="store_true",
        help="keep retryable writes on (SecantusDB: an O(n log n) scan per write past 10,000 of them)",
    )
    add(
        "--tcp-keepalive-idle-s",
        type=int,
        default=60,
        help="the node's tcp_keepalive_idle_s (default 60, pushgw's own: see KEEPALIVE below)",
    )
    add("--connect-concurrency", type=int, default=200, help="connects in flight, over all load generators")
    add(
        "--hold-s",
        type=float,
        default=0.0,
        help="after the broadcast, leave the devices idle this long and count the connections still held",
    )
    add(
        "--node-processes",
        type=int,
        default=0,
        help=f"[ppns] processes of the node (default: one per {PER_PROCESS:,} connections)",
    )
    add("--json", action="store_true")
    add("--keep-logs", type=Path)
    # load generator (child) options
    add("--loadgen", action="store_true", help=argparse.SUPPRESS)
    add("--port", type=int, help=argparse.SUPPRESS)
    add("--count", type=int, help=argparse.SUPPRESS)
    add("--offset", type=int, default=0, help=argparse.SUPPRESS)
    add("--prefix", help=argparse.SUPPRESS)
    add("--concurrency", type=int, default=200, help=argparse.SUPPRESS)
    add("--ca-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen:
        signal.signal(signal.SIGTERM, raise_interrupt)
        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(loadgen_main(args))
        return 0
    signal.signal(signal.SIGTERM, raise_interrupt)
    raise_nofile()  # inherited by the node and the load generator
    stack = Stack(Path(tempfile.mkdtemp(prefix="pushgw-ppns-")))
    runs: list[dict[str, Any]] = []
    code = 0
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(stack, args, runs))
    except KeyboardInterrupt:
        say("interrupted: stopping everything this bench started")
        code = 130
    except (BenchError, OSError, TimeoutError) as error:
        say(f"FAILED: {type(error).__name__}: {error}")
        code = 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop_all()
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in [*stack.tmp.glob("*.log"), *stack.tmp.glob("*.toml")]:
                shutil.copy2(log, args.keep_logs / log.name)
        shutil.rmtree(stack.tmp, ignore_errors=True)
    print_report(runs)
    if args.json:
        print(json.dumps({"runs": runs, "targets": targets(runs)}, separators=(",", ":"), default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
