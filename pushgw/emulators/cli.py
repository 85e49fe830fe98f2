"""`pushgw emulate apns|fcm …`: the argument parser and the command that runs an emulator."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pushgw.emulators.apns import REASON_STATUS, ApnsEmulator
from pushgw.emulators.fcm import FCM_ERRORS, FcmEmulator
from pushgw.emulators.http2_server import TokenRule
from pushgw.emulators.running import DEFAULT_PORTS, SUMMARY_INTERVAL_S, run_emulator


def add_emulate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `pushgw emulate apns|fcm …`; the parsed namespace carries `run(settings, args) -> int`."""
    text = "run an APNs or FCM emulator (HTTP/2 + TLS) for development and tests"
    emulate: argparse.ArgumentParser = subparsers.add_parser("emulate", help=text, description=text)
    kinds = emulate.add_subparsers(dest="emulator", required=True, metavar="PROVIDER")
    apns = kinds.add_parser("apns", help="Apple's HTTP/2 provider API", description=ApnsEmulator.__doc__)
    _add_common_options(apns, "apns", REASON_STATUS)
    apns.add_argument("--auth", choices=["none", "token", "certificate"], default="token")
    apns.add_argument("--throttle", action="store_true", help="one stream after a rejection (Apple's rule)")
    apns.add_argument("--topic", action="append", default=[], help="allowed apns-topic (repeat; default any)")
    apns.add_argument("--max-streams", type=int, default=1000, help="SETTINGS_MAX_CONCURRENT_STREAMS")
    apns.add_argument("--goaway-after", type=int, metavar="N", help="GOAWAY Shutdown once, after request N")
    apns.add_argument("--close-after", type=int, metavar="N", help="close each connection after N requests")
    fcm = kinds.add_parser("fcm", help="Google OAuth + FCM HTTP v1", description=FcmEmulator.__doc__)
    _add_common_options(fcm, "fcm", FCM_ERRORS)
    fcm.add_argument("--project", default="pushgw-emulator", help="the project id (default pushgw-emulator)")
    fcm.add_argument("--retry-after", type=int, default=60, metavar="S", help="retry-after on 429 and 503")
    emulate.set_defaults(run=run_emulate_command, config=None)
    return emulate


def run_emulate_command(settings: object, args: argparse.Namespace) -> int:
    """The `run` of `pushgw emulate`: the parsed arguments → `run_emulator`."""
    options: dict[str, Any] = {
        "token_rules": dict(args.reject),
        "response_delay_ms": args.delay_ms,
        "summary_interval_s": args.summary_interval,
    }
    if args.emulator == "apns":
        options |= {
            "auth": args.auth,
            "apple_throttle": args.throttle,
            "topics": args.topic,
            "max_concurrent_streams": args.max_streams,
            "goaway_after_requests": args.goaway_after,
            "close_after_requests": args.close_after,
        }
    else:
        options |= {"project_id": args.project, "retry_after_s": args.retry_after}
    return run_emulator(args.emulator, args.host, args.port, args.dir, options)


def _add_common_options(parser: argparse.ArgumentParser, kind: str, reasons: Any) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORTS[kind], help="0 picks a free port")
    directory = Path(".pushgw/emulators") / kind
    parser.add_argument(
        "--dir", type=Path, default=directory, help=f"certificates and keys (default {directory})"
    )
    parser.add_argument(
        "--reject",
        action="append",
        default=[],
        type=_token_rule_option(reasons),
        metavar="PREFIX=REASON",
        help="answer tokens starting with PREFIX with REASON, or delay:<ms> (repeat)",
    )
    parser.add_argument("--delay-ms", type=int, default=0, help="delay every answer")
    parser.add_argument("--summary-interval", type=float, default=SUMMARY_INTERVAL_S, metavar="S")


def _token_rule_option(reasons: Any) -> Callable[[str], tuple[str, TokenRule]]:
    def parse(value: str) -> tuple[str, TokenRule]:
        prefix, equals, spec = value.partition("=")
        if not equals or not prefix:
            raise argparse.ArgumentTypeError(f"expected PREFIX=REASON, got {value!r}")
        try:
            return prefix, TokenRule.parse(spec, reasons)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse
