"""HTTP/2 client benchmark: requests/s of `workers.providers.http2.Http2Pool` against nghttpd (C) over TLS.

Starts `nghttpd` on a free loopback port with a throw-away self-signed certificate, then for each
(connections, concurrency per connection) pair runs that many sender coroutines on uvloop, each sending
APNs-shaped POSTs (JWT-sized authorization, apns-* headers, a unique path and apns-id, ~150-byte JSON body;
nghttpd answers with a small file) back to back for `--duration` s after a 1 s warm-up. Prints requests/s,
latency percentiles, and the CPU used by this process and by nghttpd.

Run: `.venv/bin/python bench/http2_client.py [--duration 5] [--connections 1,2,4] [--concurrency 100,250,500]
[--max-streams 100] [--method POST|GET] [--profile FILE] [--json]`. With more senders per connection than
`--max-streams`, the surplus waits in the client's per-connection FIFO.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.ports import free_port
from workers.providers.http2 import Http2Error, Http2Pool

BODY = json.dumps(
    {"aps": {"alert": {"title": "Hello", "body": "x" * 80}, "badge": 1}, "push_id": "a" * 10}
).encode()
JWT = b"bearer " + b"e" * 180


def start_nghttpd(workdir: Path, max_streams: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    key, cert = workdir / "key.pem", workdir / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    htdocs = workdir / "htdocs"
    htdocs.mkdir()
    (htdocs / "hello").write_bytes(b'{"ok":true}')
    port = free_port()
    server = subprocess.Popen(
        ["nghttpd", f"--max-concurrent-streams={max_streams}", "-d", str(htdocs), str(port), str(key), str(cert)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return server, port, cert


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # poll interval while nghttpd starts, up to the deadline
        else:
            writer.close()
            await writer.wait_closed()
            return


async def run_case(port: int, cert: Path, connections: int, concurrency: int, duration_s: float,
                   method: bytes, server_pid: int) -> dict[str, float]:  # fmt: skip
    pool = Http2Pool("127.0.0.1", port, ssl.create_default_context(cafile=str(cert)), connections=connections)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    state = {"measuring": False, "stop": False}
    body = BODY if method == b"POST" else b""

    senders_total = connections * concurrency
    warm: set[int] = set()  # senders that have had an answer: every connection is open, its tables filled
    warmed = asyncio.Event()

    async def sender() -> None:
        clock = time.perf_counter
        me = id(asyncio.current_task())
        while not state["stop"]:
            headers = [
                (b"authorization", JWT), (b"apns-topic", b"com.example.app"), (b"apns-push-type", b"alert"),
                (b"apns-id", str(uuid.uuid4()).encode()), (b"apns-priority", b"10"),
            ]  # fmt: skip
            path = b"/hello?device=" + os.urandom(32).hex().encode()  # unique like /3/device/<token>
            started = clock()
            try:
                response = await pool.request(method, path, headers, body, 10.0)
            except Http2Error as error:
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                continue
            if not warmed.is_set():
                warm.add(me)
                if len(warm) == senders_total:
                    warmed.set()
            if state["measuring"]:
                latencies.append(clock() - started)
                if response.status != 200:
                    errors[f"HTTP {response.status}"] = errors.get(f"HTTP {response.status}", 0) + 1

    senders = [asyncio.create_task(sender()) for _ in range(senders_total)]
    async with asyncio.timeout(30):
        await warmed.wait()  # warm-up: every sender has had an answer
    state["measuring"] = True
    cpu_before, server_before, started = time.process_time(), cpu_s(server_pid), time.perf_counter()
    await asyncio.sleep(duration_s)  # the measuring window itself
    elapsed_s = time.perf_counter() - started
    cpu_used, server_used = time.process_time() - cpu_before, cpu_s(server_pid) - server_before
    state["measuring"] = False
    state["stop"] = True
    await asyncio.gather(*senders)
    stats = pool.connection_stats()
    await pool.close()
    latencies.sort()

    def percentile(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * fraction))] * 1000 if latencies else 0.0

    return {
        "connections": connections, "concurrency": concurrency, "requests": len(latencies),
        "rate": len(latencies) / elapsed_s, "p50_ms": percentile(0.5), "p99_ms": percentile(0.99),
        "client_cpu_pct": 100 * cpu_used / elapsed_s, "server_cpu_pct": 100 * server_used / elapsed_s,
        "errors": sum(errors.values()), "max_streams": max(limit for limit, _ in stats),
    }  # fmt: skip


async def run_all(args: argparse.Namespace, port: int, cert: Path, server_pid: int) -> list[dict[str, float]]:
    await wait_listening(port)
    results = []
    for connections in args.connections:
        for concurrency in args.concurrency:
            result = await run_case(
                port, cert, connections, concurrency, args.duration, args.method, server_pid
            )
            results.append(result)
            print(
                f"{args.method.decode()} conns={connections} conc/conn={concurrency:4d}  "
                f"{result['rate']:9,.0f} req/s  p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
                f"client cpu {result['client_cpu_pct']:3.0f}%  nghttpd cpu {result['server_cpu_pct']:3.0f}%  "
                f"errors {result['errors']}  server max_streams {result['max_streams']}",
                flush=True,
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4])
    parser.add_argument(
        "--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[100, 250, 500]
    )
    parser.add_argument("--method", type=str.encode, default=b"POST", choices=[b"POST", b"GET"])
    parser.add_argument(
        "--max-streams", type=int, default=100, help="nghttpd's SETTINGS_MAX_CONCURRENT_STREAMS"
    )
    parser.add_argument("--profile", help="write cProfile stats of the whole run to this file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-http2-") as tmp:
        server, port, cert = start_nghttpd(Path(tmp), args.max_streams)
        try:
            if args.profile:
                import cProfile

                with cProfile.Profile() as profile:
                    results = uvloop.run(run_all(args, port, cert, server.pid))
                profile.dump_stats(args.profile)
            else:
                results = uvloop.run(run_all(args, port, cert, server.pid))
        except KeyboardInterrupt:
            return 130
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=5)
            if server.poll() is None:
                server.kill()
                server.wait()
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
