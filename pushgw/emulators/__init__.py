"""APNs and FCM emulators over HTTP/2 + TLS, for `pushgw dev`, `pushgw emulate` and tests (re-exports)."""

from __future__ import annotations

from pushgw.emulators.apns import ApnsEmulator, ApnsStats, Notification
from pushgw.emulators.cli import add_emulate_parser
from pushgw.emulators.fcm import FcmEmulator, FcmStats, Message
from pushgw.emulators.http2_server import TokenRule
from pushgw.emulators.running import ServerThread, run_emulator, run_in_thread
from pushgw.emulators.tls import (
    ServiceAccount,
    TokenKey,
    client_ssl_context,
    write_apns_key,
    write_client_certificate,
    write_server_certificates,
    write_service_account,
)

__all__ = [
    "ApnsEmulator",
    "ApnsStats",
    "FcmEmulator",
    "FcmStats",
    "Message",
    "Notification",
    "ServerThread",
    "ServiceAccount",
    "TokenKey",
    "TokenRule",
    "add_emulate_parser",
    "client_ssl_context",
    "run_emulator",
    "run_in_thread",
    "write_apns_key",
    "write_client_certificate",
    "write_server_certificates",
    "write_service_account",
]
