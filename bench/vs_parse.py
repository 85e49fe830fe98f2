"""Parse Server 9.10's own push pipeline vs pushgw: one push to N iOS installations on one channel.

Both sides get the same audience in the same SecantusDB and send to the same HTTP/2 sink, the APNs emulator
(`pushgw emulate apns`, token auth, its own process), all started by this script:

  (a) Parse Server 9.10.0 (tests/e2e/parse_host's pinned install, `bench/vs_parse_host.js`) with its default
      `@parse/push-adapter` 8.4 (node-apn) pointed at the emulator through the adapter's `ios` options
      (`address`, `port`, `ca`), once per `--parse-batch-sizes` × `--parse-request-timeouts-ms` value
      (Parse's `queueOptions.batchSize`, default 100, and node-apn's `requestTimeout`, default 5000 ms; this
      bench's defaults, 500 and 60000, are the fastest setting that delivered everything at 50,000 here);
  (b) pushgw: `pushgw serve` + `--workers` `pushgw worker` (default 1) on RabbitMQ with a unique prefix and
      default worker settings, the emulator as the app's APNs endpoint.

Per size (`--sizes`, default 10000,50000) the installations are seeded straight into `_Installation` (Parse's
storage format, channel `bench`), then each side gets `POST /parse/push {"channels":["bench"],"data":{...}}`
and the bench polls `_PushStatus` until it is final: seconds from the POST to the final status, `numSent`,
`numFailed`, what the emulator accepted for that push (its counter delta once it stops moving), and the CPU
seconds of each process during the push. A run that is not final after `--max-seconds` is reported as cut off.
Then the ratio of Parse's fastest complete run (every device delivered, none failed) to pushgw's.

Run: `.venv/bin/python bench/vs_parse.py [--sizes 10000,50000] [--parse-batch-sizes 100,500]
[--parse-request-timeouts-ms 5000,60000]
[--workers 1] [--max-seconds 1200] [--wait-quiet 300] [--json] [--keep-logs DIR]`.
Needs node + the e2e install (`scripts/ensure-parse-server.sh`, run by the bench) and RabbitMQ on
127.0.0.1:5672. Exit code: 0 when every run finished and pushgw delivered everything; 1 otherwise; 2 when
the bench could not run; 130 on Ctrl-C/SIGTERM. Children and the temp dir are removed on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx2
import pymongo
from pymongo import MongoClient
from pymongo.errors import PyMongoError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    REPO,
    BenchError,
    cpu_seconds,
    free_port,
    json_safe,
    raise_interrupt,
    stop_process,
    tail,
    wait_for_quiet,
)

from pushgw.topology import PARSE, PLAN, SEND, Topology

APP_ID, MASTER_KEY, TOPIC, DATABASE, CHANNEL = (
    "benchApp",
    "bench-master-key",
    "com.example.bench",
    "parse",
    "bench",
)
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
PARSE_HOST = REPO / "tests" / "e2e" / "parse_host"
DATA = {"alert": "Your order #48213 has shipped and will arrive on Thursday", "sound": "default"}
DELAY_TIERS_S = (5, 30, 120, 600, 1800)  # pushgw's default worker.delay_tiers_s: the queues to delete
START_TIMEOUT_S, STOP_TIMEOUT_S, POLL_S, SETTLE_S = 60.0, 15.0, 0.2, 2.0
Document = dict[str, Any]


def say(text: str) -> None:
    print(f"[vs_parse {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Emulator:
    port: int
    ca_file: str
    key_file: str
    key_id: str
    team_id: str
    process: subprocess.Popen[bytes]
    client: httpx2.Client

    def accepted(self) -> int:
        stats = self.client.get(f"https://127.0.0.1:{self.port}/emulator/stats").json()
        return int(stats["accepted"])


@dataclass
class Bench:
    tmp: Path
    prefix: str = field(default_factory=lambda: f"vsparse{uuid.uuid4().hex[:8]}")
    mongo_port: int = 0
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    mongo: MongoClient[Document] | None = None
    emulator: Emulator | None = None

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/?directConnection=true"

    @property
    def db(self) -> Any:
        assert self.mongo is not None
        return self.mongo[DATABASE]

    def spawn(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                args, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )  # fmt: skip
        self.children.append(process)
        return process


def wait_until(ready: Callable[[], object], what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready after {START_TIMEOUT_S:g} s:\n{tail(log)}")
        time.sleep(0.1)  # polling a child's readiness


def answers(url: str, **options: Any) -> bool:
    try:
        return httpx2.get(url, timeout=1, **options).status_code == 200
    except httpx2.HTTPError:
        return False


# ---------------------------------------------------------------- shared parts


def start_secantus(bench: Bench) -> None:
    bench.mongo_port = free_port()
    log = bench.tmp / "secantus.log"
    (bench.tmp / "mongo").mkdir()
    process = bench.spawn(
        [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(bench.mongo_port),
         "--storage-path", str(bench.tmp / "mongo"), "--log-level", "WARNING"], log,
    )  # fmt: skip
    bench.mongo = MongoClient(bench.mongo_uri, serverSelectionTimeoutMS=250, timeoutMS=120_000)

    def pings() -> bool:
        try:
            bench.db.command("ping")
        except PyMongoError:
            return False
        return True

    wait_until(pings, "SecantusDB", process, log)


def start_emulator(bench: Bench) -> None:
    port, log, directory = free_port(), bench.tmp / "apns-emulator.log", bench.tmp / "apns"
    process = bench.spawn(
        [sys.executable, "-m", "pushgw.cli", "emulate", "apns", "--port", str(port), "--dir", str(directory),
         "--summary-interval", "3600"], log,
    )  # fmt: skip
    wait_until(lambda: "token key:" in log.read_text(errors="replace"), "APNs emulator", process, log)
    lines = [line.strip() for line in log.read_text().splitlines()]
    banner = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines
              if line.startswith(("CA certificate:", "token key:"))}  # fmt: skip
    key_file, _, ids = banner["token key"].partition(" (key id ")
    key_id, _, team = ids.partition(", team id ")
    context = ssl.create_default_context(cafile=banner["CA certificate"])
    client = httpx2.Client(http2=True, verify=context, timeout=10)
    bench.emulator = Emulator(
        port, banner["CA certificate"], key_file, key_id, team.rstrip(")"), process, client
    )


def seed(bench: Bench, size: int) -> None:
    """`size` iOS installations on CHANNEL in Parse's storage format (and nothing else in the table)."""
    bench.db["_Installation"].drop()
    bench.db["_SCHEMA"].replace_one(
        {"_id": "_Installation"},
        {"_id": "_Installation", "objectId": "string", "updatedAt": "date", "createdAt": "date",
         "installationId": "string", "deviceToken": "string", "channels": "array", "deviceType": "string",
         "appIdentifier": "string", "badge": "number"},
        upsert=True,
    )  # fmt: skip
    now = datetime.now(UTC)
    for start in range(0, size, 5000):
        bench.db["_Installation"].insert_many(
            [{"_id": f"b{index:09d}", "installationId": str(uuid.UUID(int=index)), "deviceType": "ios",
              "deviceToken": f"{index + 1:064x}", "channels": [CHANNEL], "appIdentifier": TOPIC,
              "_created_at": now, "_updated_at": now}
             for index in range(start, min(size, start + 5000))]
        )  # fmt: skip


# ---------------------------------------------------------------- one push, either side


def push_and_wait(bench: Bench, url: str, pids: dict[str, int], size: int, max_s: float) -> dict[str, Any]:
    """POST the push, poll `_PushStatus` until final; time, counts, the emulator's delta and CPU."""
    assert bench.emulator is not None
    pids = {**pids, "secantus": bench.children[0].pid, "emulator": bench.emulator.process.pid}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    accepted_before = bench.emulator.accepted()
    headers = {"X-Parse-Application-Id": APP_ID, "X-Parse-Master-Key": MASTER_KEY}
    started = time.monotonic()
    answer = httpx2.post(
        f"{url}/push", json={"channels": [CHANNEL], "data": DATA}, headers=headers, timeout=60
    )
    if answer.status_code != 200:
        raise BenchError(f"push refused: {answer.status_code} {answer.text}")
    push_id = answer.headers["X-Parse-Push-Status-Id"]
    row: Document = {}
    while time.monotonic() - started < max_s:
        try:
            with pymongo.timeout(10):
                row = bench.db["_PushStatus"].find_one({"_id": push_id}) or {}
        except PyMongoError:
            continue  # SecantusDB busy with the pushing side's own queries (Parse's skip pages): ask again
        if row.get("status") in ("succeeded", "failed"):
            break
        time.sleep(POLL_S)  # polling the status row
    seconds = time.monotonic() - started
    final = row.get("status") in ("succeeded", "failed")
    delivered = settled_delta(bench.emulator, accepted_before)
    return {
        "size": size, "push_id": push_id, "final": final, "status": row.get("status"), "seconds": round(seconds, 2),
        "numSent": row.get("numSent", 0), "numFailed": row.get("numFailed", 0), "delivered": delivered,
        "complete": final and row.get("numSent") == size and not row.get("numFailed") and delivered == size,
        "cpu_s": {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in pids.items()},
    }  # fmt: skip


def settled_delta(emulator: Emulator, before: int) -> int:
    """What the emulator accepted since `before`, once it stopped moving for SETTLE_S (late sends count)."""
    last, since = emulator.accepted(), time.monotonic()
    while time.monotonic() - since < SETTLE_S:
        time.sleep(POLL_S)  # watching a counter come to rest
        now = emulator.accepted()
        if now != last:
            last, since = now, time.monotonic()
    return last - before


def run_parse(bench: Bench, size: int, batch: int, timeout_ms: int, max_s: float) -> dict[str, Any]:
    assert bench.emulator is not None
    port, log = free_port(), bench.tmp / f"parse-{size}-{batch}-{timeout_ms}.log"
    env = {
        "NODE_PATH": str(PARSE_HOST / "node_modules"), "PARSE_PORT": str(port), "PARSE_APP_ID": APP_ID,
        "PARSE_MASTER_KEY": MASTER_KEY, "PARSE_DB_URI": f"mongodb://127.0.0.1:{bench.mongo_port}/{DATABASE}",
        "PARSE_LOGS_DIR": str(bench.tmp / "parse-logs"), "PARSE_PUSH_BATCH_SIZE": str(batch),
        "APNS_PORT": str(bench.emulator.port), "APNS_CA_FILE": bench.emulator.ca_file,
        "APNS_KEY_FILE": bench.emulator.key_file, "APNS_KEY_ID": bench.emulator.key_id,
        "APNS_TEAM_ID": bench.emulator.team_id, "APNS_TOPIC": TOPIC, "APNS_REQUEST_TIMEOUT_MS": str(timeout_ms),
    }  # fmt: skip
    process = bench.spawn(["node", str(REPO / "bench" / "vs_parse_host.js")], log, env)
    url = f"http://127.0.0.1:{port}/parse"
    try:
        wait_until(lambda: answers(f"{url}/health"), "Parse Server", process, log)
        say(f"Parse Server, batch {batch}, requestTimeout {timeout_ms} ms: pushing to {size:,} installations")
        result = push_and_wait(bench, url, {"parse": process.pid}, size, max_s)
    finally:
        stop_process(process, STOP_TIMEOUT_S)
    return {"side": "parse", "batch_size": batch, "request_timeout_ms": timeout_ms, **result}


def pushgw_config(bench: Bench, port: int) -> tuple[Path, dict[str, str]]:
    assert bench.emulator is not None
    path = bench.tmp / "pushgw.toml"
    path.write_text(
        f'[mongo]\nuri = "{bench.mongo_uri}"\ntimeout_ms = 120000\n[queue]\nurl = "{RABBIT_URL}"\n'
        f'prefix = "{bench.prefix}"\n[http]\nport = {port}\n[worker]\nshutdown_timeout_s = 5\n'
        '[log]\nlevel = "warning"\n'
    )
    apns = {"bundle_ids": [TOPIC], "url": f"https://127.0.0.1:{bench.emulator.port}", "ca_file": bench.emulator.ca_file,
            "key_file": bench.emulator.key_file, "key_id": bench.emulator.key_id, "team_id": bench.emulator.team_id,
            "environment": "sandbox"}  # fmt: skip
    app = {"app_id": APP_ID, "master_key": MASTER_KEY, "mongo_database": DATABASE, "apns": [apns]}
    return path, {"PUSHGW_APPS": json.dumps([app])}


def run_pushgw(bench: Bench, size: int, workers: int, max_s: float) -> dict[str, Any]:
    port = free_port()
    config, env = pushgw_config(bench, port)
    command = [sys.executable, "-m", "pushgw.cli"]
    intake_log = bench.tmp / "pushgw-serve.log"
    intake = bench.spawn([*command, "serve", "--config", str(config)], intake_log, env)
    fleet = []
    for number in range(workers):
        log = bench.tmp / f"pushgw-worker{number}.log"
        fleet.append((bench.spawn([*command, "worker", "--config", str(config)], log, env), log))
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/ready"), "pushgw serve", intake, intake_log)
        for worker, log in fleet:  # the worker logs at warning: ready = its queues have consumers
            wait_until(lambda: consumers(bench.prefix) >= workers, "pushgw worker", worker, log)
        say(f"pushgw, {workers} worker(s): pushing to {size:,} installations")
        pids = {"pushgw-serve": intake.pid} | {f"pushgw-worker{n}": w.pid for n, (w, _) in enumerate(fleet)}
        result = push_and_wait(bench, f"http://127.0.0.1:{port}/parse", pids, size, max_s)
    finally:
        for process in [intake, *(worker for worker, _ in fleet)]:
            stop_process(process, STOP_TIMEOUT_S)
    return {"side": "pushgw", "workers": workers, **result}


def consumers(prefix: str) -> int:
    async def count() -> int:
        connection = await aio_pika.connect(RABBIT_URL)
        async with connection:
            try:
                queue = await (await connection.channel()).declare_queue(f"{prefix}.{SEND}", passive=True)
            except aio_pika.exceptions.AMQPError:
                return 0
            return int(queue.declaration_result.consumer_count or 0)

    return asyncio.run(count())


def delete_topology(prefix: str) -> None:
    async def delete() -> None:
        topology = Topology(prefix, 1, DELAY_TIERS_S)
        queues = [topology.queue(route) for route in (PLAN, SEND, PARSE)] + [topology.dead_queue]
        queues += [topology.delay_queue(tier) for tier in DELAY_TIERS_S]
        connection = await aio_pika.connect(RABBIT_URL, timeout=10)
        async with connection:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue)
            for exchange in (topology.work_exchange, topology.dead_exchange, topology.delay_exchange):
                await channel.exchange_delete(exchange)

    asyncio.run(delete())


# ---------------------------------------------------------------- report


def describe(run: dict[str, Any]) -> str:
    parse = f"parse batch {run.get('batch_size')}/{run.get('request_timeout_ms')} ms"
    label = parse if run["side"] == "parse" else f"pushgw {run['workers']} worker(s)"
    state = "final" if run["final"] else "CUT OFF (not final)"
    cpu = "  ".join(f"{name} {seconds:g}" for name, seconds in run["cpu_s"].items())
    verdict = "complete" if run["complete"] else "!!! INCOMPLETE"
    return (f"  {label:<24} {run['seconds']:>9.1f} s  {state}: {run['status']}  numSent {run['numSent']:,}  "
            f"numFailed {run['numFailed']:,}  emulator accepted {run['delivered']:,}  {verdict}\n"
            f"  {'':<24} cpu s: {cpu}")  # fmt: skip


def compare(size: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    parse = [run for run in runs if run["side"] == "parse" and run["size"] == size and run["complete"]]
    ours = [run for run in runs if run["side"] == "pushgw" and run["size"] == size]
    if not parse or not ours:
        return {"size": size, "ratio": None}
    best = min(parse, key=lambda run: run["seconds"])
    return {"size": size, "parse_batch_size": best["batch_size"],
            "parse_request_timeout_ms": best["request_timeout_ms"], "parse_s": best["seconds"],
            "pushgw_s": ours[0]["seconds"], "ratio": round(best["seconds"] / ours[0]["seconds"], 1)}  # fmt: skip


def run(args: argparse.Namespace, bench: Bench) -> list[dict[str, Any]]:
    installed = subprocess.run([str(REPO / "scripts" / "ensure-parse-server.sh")], check=False)
    if installed.returncode != 0:
        raise BenchError("scripts/ensure-parse-server.sh failed (node, npm and the registry are needed)")
    start_secantus(bench)
    start_emulator(bench)
    runs: list[dict[str, Any]] = []
    for size in args.sizes:
        say(f"seeding {size:,} iOS installations")
        seed(bench, size)
        for batch in args.parse_batch_sizes:
            for timeout_ms in args.parse_request_timeouts_ms:
                runs.append(run_parse(bench, size, batch, timeout_ms, args.max_seconds))
                print(describe(runs[-1]), flush=True)
        runs.append(run_pushgw(bench, size, args.workers, args.max_seconds))
        print(describe(runs[-1]), flush=True)
        comparison = compare(size, runs)
        if comparison["ratio"] is None:
            print(f"{size:,}: no complete Parse run to compare with", flush=True)
        else:
            print(f"{size:,}: Parse (batch {comparison['parse_batch_size']}, requestTimeout "
                  f"{comparison['parse_request_timeout_ms']} ms) {comparison['parse_s']:.1f} s / "
                  f"pushgw {comparison['pushgw_s']:.1f} s = {comparison['ratio']}×", flush=True)  # fmt: skip
    return runs


def teardown(bench: Bench, keep_logs: Path | None) -> None:
    for process in reversed(bench.children):
        stop_process(process, STOP_TIMEOUT_S)
    try:
        delete_topology(bench.prefix)
    except (OSError, aio_pika.exceptions.AMQPError) as error:
        say(f"could not delete the {bench.prefix}.* queues: {error}")
    if bench.emulator is not None:
        bench.emulator.client.close()
    if bench.mongo is not None:
        bench.mongo.close()
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        for log in [*bench.tmp.glob("*.log"), *bench.tmp.glob("*.toml")]:
            shutil.copy2(log, keep_logs / log.name)
    shutil.rmtree(bench.tmp, ignore_errors=True)


def numbers(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=numbers, default=[10_000, 50_000])
    parser.add_argument("--parse-batch-sizes", type=numbers, default=[500])
    parser.add_argument(
        "--parse-request-timeouts-ms", type=numbers, default=[60000], help="node-apn requestTimeout"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=1200.0, help="per push, then it is cut off")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep-logs", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, raise_interrupt)
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet, say)
    bench = Bench(Path(tempfile.mkdtemp(prefix="vs-parse-")))
    try:
        runs = run(args, bench)
    except BenchError as error:
        say(f"bench could not run: {error}")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        teardown(bench, args.keep_logs)
    comparisons = [compare(size, runs) for size in args.sizes]
    if args.json:
        print(json.dumps(json_safe({"runs": runs, "comparisons": comparisons})))
    ours_complete = all(run["complete"] for run in runs if run["side"] == "pushgw")
    return 0 if ours_complete and all(run["final"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
