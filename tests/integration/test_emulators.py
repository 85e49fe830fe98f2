"""The APNs and FCM emulators over real TLS + HTTP/2: their checks, scripted errors, faults and counters."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx2
import jwt
import pytest

from pushgw.emulators import (
    ApnsEmulator,
    FcmEmulator,
    TokenRule,
    add_emulate_parser,
    client_ssl_context,
    write_service_account,
)
from pushgw.emulators.fcm import FCM_SCOPE
from tests.fixtures.waiting import until

pytest_plugins = ["pushgw.testing"]

TOKEN = "ab" * 32
TOPIC = "com.example.app"
PAYLOAD = b'{"aps":{"alert":"hi"}}'
MAX_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def apns_options(**options: Any) -> Any:
    """Indirect parametrization of the `apns_emulator` fixture with one set of options."""
    return pytest.mark.parametrize("apns_emulator", [options], indirect=True, ids=[""])


def fcm_options(**options: Any) -> Any:
    return pytest.mark.parametrize("fcm_emulator", [options], indirect=True, ids=[""])


def provider_token(emulator: ApnsEmulator, iat: int | None = None, **overrides: Any) -> str:
    assert emulator.token_key_file is not None
    key = overrides.pop("key", emulator.token_key_file.read_bytes())
    claims = {
        "iss": overrides.pop("team_id", emulator.team_id),
        "iat": int(time.time()) if iat is None else iat,
    }
    kid = overrides.pop("key_id", emulator.key_id)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def client_for() -> Iterator[Callable[..., httpx2.Client]]:
    """`client_for(emulator, http2=True, context=None)`: an httpx2 client trusting the emulator's CA, closed after."""
    clients: list[httpx2.Client] = []

    def make(emulator: Any, http2: bool = True, context: ssl.SSLContext | None = None) -> httpx2.Client:
        client = httpx2.Client(
            base_url=emulator.url, http2=http2, verify=context or client_ssl_context(emulator.ca_file)
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def push(
    client: httpx2.Client, emulator: ApnsEmulator, token: str = TOKEN, body: bytes = PAYLOAD, **headers: str
) -> Any:
    merged = {"apns-topic": TOPIC, "apns-push-type": "alert", **headers}
    if emulator.auth == "token" and "authorization" not in headers:
        merged["authorization"] = f"bearer {provider_token(emulator)}"
    return client.post(f"/3/device/{token}", content=body, headers={k: v for k, v in merged.items() if v})


class RawH2Client:
    """A bare h2 client on a TLS socket, to see what httpx hides: SETTINGS, GOAWAY, the connection closing."""

    def __init__(self, emulator: Any) -> None:
        context = client_ssl_context(emulator.ca_file)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", emulator.port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.events: list[h2.events.Event] = []
        self.closed = False

    def request(self, path: str, headers: dict[str, str], body: bytes = PAYLOAD, send: bool = True) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        method = "POST" if body else "GET"
        base = {":method": method, ":scheme": "https", ":authority": "127.0.0.1", ":path": path}
        self.h2.send_headers(stream_id, list({**base, **headers}.items()), end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)
        if send:
            self.sock.sendall(self.h2.data_to_send())
        return stream_id

    def read_until(self, predicate: Callable[[list[h2.events.Event]], bool], timeout_s: float = 5) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.events):
            assert time.monotonic() < deadline, f"timed out; events so far: {self.events}"
            data = self.sock.recv(65536)
            if not data:
                self.closed = True
                return
            for event in self.h2.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2.events.DataReceived) and event.stream_id:
                    self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            reply = self.h2.data_to_send()
            if reply:
                self.sock.sendall(reply)

    def status(self, stream_id: int) -> int:
        self.read_until(lambda events: any(ended(event, stream_id) for event in events))
        (response,) = [
            e for e in self.events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream_id
        ]
        return int(dict(response.headers or [])[":status"])

    def body(self, stream_id: int) -> bytes:
        self.status(stream_id)
        chunks = [
            e.data or b""
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        ]
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


def ended(event: h2.events.Event, stream_id: int) -> bool:
    return isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id


def stream_limits(events: list[h2.events.Event]) -> list[int]:
    return [
        event.changed_settings[MAX_STREAMS].new_value
        for event in events
        if isinstance(event, h2.events.RemoteSettingsChanged) and MAX_STREAMS in event.changed_settings
    ]


@pytest.fixture
def raw_client() -> Iterator[Callable[[Any], RawH2Client]]:
    clients: list[RawH2Client] = []

    def make(emulator: Any) -> RawH2Client:
        clients.append(RawH2Client(emulator))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


# ---------------------------------------------------------------- APNs: authentication


def test_notification_with_valid_jwt_is_accepted_and_recorded(
    apns_emulator: ApnsEmulator, client_for: Any
) -> None:
    client = client_for(apns_emulator)
    apns_id = "0f0e0d0c-0b0a-4908-8706-050403020100"
    response = push(client, apns_emulator, **{"apns-id": apns_id, "apns-priority": "10"})
    assert (response.status_code, response.http_version, response.content) == (200, "HTTP/2", b"")
    assert response.headers["apns-id"] == apns_id
    (notification,) = apns_emulator.notifications(TOKEN)
    assert (notification.apns_id, notification.payload) == (apns_id, {"aps": {"alert": "hi"}})
    assert notification.headers["apns-priority"] == "10"
    stats = apns_emulator.stats()
    assert (stats.accepted, stats.connections_opened, stats.provider_tokens) == (1, 1, 1)


def test_apns_id_is_generated_when_absent(apns_emulator: ApnsEmulator, client_for: Any) -> None:
    response = push(client_for(apns_emulator), apns_emulator)
    assert response.status_code == 200
    assert len(response.headers["apns-id"]) == 36
    assert apns_emulator.notifications()[0].apns_id == response.headers["apns-id"]


def test_one_jwt_is_counted_once_however_many_requests_carry_it(
    apns_emulator: ApnsEmulator, client_for: Any
) -> None:
    client, token = client_for(apns_emulator), provider_token(apns_emulator)
    for _ in range(3):
        assert push(client, apns_emulator, authorization=f"bearer {token}").status_code == 200
    stats = apns_emulator.stats()
    assert (stats.provider_tokens, stats.provider_tokens_by_team) == (1, {apns_emulator.team_id: 1})


@pytest.mark.parametrize(
    ("authorization", "jwt_changes", "reason"),
    [
        ("", None, "MissingProviderToken"),
        ("basic abc", None, "MissingProviderToken"),
        ("bearer not-a-jwt", None, "InvalidProviderToken"),
        ("bearer", {"key_id": "OTHERKEY01"}, "InvalidProviderToken"),
        ("bearer", {"team_id": "OTHERTEAM1"}, "InvalidProviderToken"),
        ("bearer", {"iat_s": 3600}, "InvalidProviderToken"),
        ("bearer", {"iat_s": -3601}, "ExpiredProviderToken"),
    ],
    ids=["missing", "not-bearer", "garbage", "unknown-kid", "wrong-team", "future-iat", "older-than-1h"],
)
def test_bad_provider_tokens_get_403(
    apns_emulator: ApnsEmulator,
    client_for: Any,
    authorization: str,
    jwt_changes: dict[str, Any] | None,
    reason: str,
) -> None:
    if jwt_changes is not None:
        changes = dict(jwt_changes)
        iat = int(time.time()) + changes.pop("iat_s", 0)
        authorization = f"{authorization} {provider_token(apns_emulator, iat=iat, **changes)}"
    response = push(client_for(apns_emulator), apns_emulator, authorization=authorization)
    assert (response.status_code, response.json()) == (403, {"reason": reason})
    assert apns_emulator.stats().rejected == {reason: 1}


def test_jwt_signed_with_another_key_gets_403_invalid_provider_token(
    apns_emulator: ApnsEmulator, client_for: Any, tmp_path: Path
) -> None:
    from pushgw.emulators import write_apns_key

    other_key = write_apns_key(tmp_path / "other.p8").read_bytes()
    authorization = f"bearer {provider_token(apns_emulator, key=other_key)}"
    response = push(client_for(apns_emulator), apns_emulator, authorization=authorization)
    assert (response.status_code, response.json()) == (403, {"reason": "InvalidProviderToken"})


@apns_options(auth="certificate")
def test_certificate_auth_accepts_a_client_certificate_without_jwt(
    apns_emulator: ApnsEmulator, client_for: Any
) -> None:
    assert apns_emulator.client_certificate is not None
    context = client_ssl_context(apns_emulator.ca_file, apns_emulator.client_certificate)
    response = push(client_for(apns_emulator, context=context), apns_emulator)
    assert response.status_code == 200
    assert apns_emulator.stats().accepted == 1


@apns_options(auth="certificate")
def test_certificate_auth_refuses_a_client_without_certificate(
    apns_emulator: ApnsEmulator, client_for: Any
) -> None:
    with pytest.raises(httpx2.TransportError):
        push(client_for(apns_emulator), apns_emulator)
    assert apns_emulator.stats().accepted == 0


# ---------------------------------------------------------------- APNs: request checks


@apns_options(auth="none", topics=[TOPIC])
@pytest.mark.parametrize(
    ("request_parts", "status", "reason"),
    [
        ({"method": "GET"}, 405, "MethodNotAllowed"),
        ({"path": "/3/notification/" + TOKEN}, 404, "BadPath"),
        ({"path": "/3/device/"}, 400, "MissingDeviceToken"),
        ({"headers": {"apns-topic": ""}}, 400, "MissingTopic"),
        ({"headers": {"apns-topic": "com.example.other"}}, 400, "TopicDisallowed"),
        ({"token": "xyz" + TOKEN[3:]}, 400, "BadDeviceToken"),
        ({"token": TOKEN + "a"}, 400, "BadDeviceToken"),
        ({"body": b""}, 400, "PayloadEmpty"),
        ({"body": b"x" * 4097}, 413, "PayloadTooLarge"),
        ({"body": b"x" * 5121, "headers": {"apns-push-type": "voip"}}, 413, "PayloadTooLarge"),
        ({"headers": {"apns-push-type": "banner"}}, 400, "InvalidPushType"),
        ({"headers": {"apns-priority": "7"}}, 400, "BadPriority"),
        ({"headers": {"apns-id": "0F0E0D0C-0B0A-4908-8706-050403020100"}}, 400, "BadMessageId"),
        ({"headers": {"apns-id": "not-a-uuid"}}, 400, "BadMessageId"),
        ({"headers": {"apns-collapse-id": "c" * 65}}, 400, "BadCollapseId"),
        ({"headers": {"apns-expiration": "tomorrow"}}, 400, "BadExpirationDate"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_invalid_requests_get_apple_reasons(
    apns_emulator: ApnsEmulator, client_for: Any, request_parts: dict[str, Any], status: int, reason: str
) -> None:
    path = request_parts.get("path", f"/3/device/{request_parts.get('token', TOKEN)}")
    headers = {"apns-topic": TOPIC, "apns-push-type": "alert", **request_parts.get("headers", {})}
    headers = {name: value for name, value in headers.items() if value}
    body = request_parts.get("body", PAYLOAD)
    response = client_for(apns_emulator).request(
        request_parts.get("method", "POST"), path, content=body, headers=headers
    )
    assert (response.status_code, response.json()) == (status, {"reason": reason})
    assert apns_emulator.stats().rejected == {reason: 1}
    assert apns_emulator.notifications() == []


@apns_options(auth="none")
def test_limits_are_inclusive(apns_emulator: ApnsEmulator, client_for: Any) -> None:
    client = client_for(apns_emulator)
    assert push(client, apns_emulator, body=b"x" * 4096).status_code == 200
    assert push(client, apns_emulator, body=b"x" * 5120, **{"apns-push-type": "voip"}).status_code == 200
    assert push(client, apns_emulator, **{"apns-collapse-id": "c" * 64}).status_code == 200


# ---------------------------------------------------------------- APNs: scripted rejections


@apns_options(
    auth="none",
    token_rules={"bad": "BadDeviceToken", "busy": "TooManyRequests", "err": "InternalServerError",
                 "unavail": "ServiceUnavailable"},
)  # fmt: skip
@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [("bad" + TOKEN, 400, "BadDeviceToken"), ("busy1", 429, "TooManyRequests"),
     ("err1", 500, "InternalServerError"), ("unavail1", 503, "ServiceUnavailable")],
)  # fmt: skip
def test_token_prefix_rules_reject_with_their_reason(
    apns_emulator: ApnsEmulator, client_for: Any, token: str, status: int, reason: str
) -> None:
    response = push(client_for(apns_emulator), apns_emulator, token=token)
    assert (response.status_code, response.json()) == (status, {"reason": reason})
    assert len(response.headers["apns-id"]) == 36


@apns_options(auth="none", token_rules={"dead": "Unregistered"}, unregistered_timestamp_ms=1_700_000_000_000)
def test_unregistered_carries_the_configured_timestamp(apns_emulator: ApnsEmulator, client_for: Any) -> None:
    response = push(client_for(apns_emulator), apns_emulator, token="dead" + TOKEN[4:])
    assert (response.status_code, response.json()) == (
        410,
        {"reason": "Unregistered", "timestamp": 1_700_000_000_000},
    )


@apns_options(auth="none", token_rules={"dead": "Unregistered"})
def test_unregistered_timestamp_defaults_to_now(apns_emulator: ApnsEmulator, client_for: Any) -> None:
    before_ms = int(time.time() * 1000)
    response = push(client_for(apns_emulator), apns_emulator, token="dead" + TOKEN[4:])
    assert response.status_code == 410
    assert before_ms <= response.json()["timestamp"] <= int(time.time() * 1000)


@apns_options(auth="none", token_rules={"slow": "delay:300"})
def test_delay_rule_answers_200_late(apns_emulator: ApnsEmulator, client_for: Any) -> None:
    client = client_for(apns_emulator)
    started = time.monotonic()
    assert push(client, apns_emulator, token="slow1").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert [n.token for n in apns_emulator.notifications()] == ["slow1"]


def test_token_rule_specs_are_checked() -> None:
    assert TokenRule.parse("delay:250", {"X"}) == TokenRule(delay_ms=250)
    with pytest.raises(ValueError, match="unknown reason 'Nope'"):
        TokenRule.parse("Nope", {"Unregistered"})


# ---------------------------------------------------------------- APNs: connection behaviour


@apns_options(apple_throttle=True)
def test_apple_throttle_starts_token_connections_at_one_stream_and_follows_rejections(
    apns_emulator: ApnsEmulator, raw_client: Any
) -> None:
    client = raw_client(apns_emulator)
    token = provider_token(apns_emulator)
    headers = {"apns-topic": TOPIC, "authorization": f"bearer {token}"}
    client.read_until(lambda events: stream_limits(events) == [1])
    assert client.status(client.request(f"/3/device/{TOKEN}", headers)) == 200
    client.read_until(lambda events: stream_limits(events) == [1, 1000])
    assert client.status(client.request("/3/device/nothex", headers)) == 400
    client.read_until(lambda events: stream_limits(events) == [1, 1000, 1])
    assert client.status(client.request("/3/device/nothex", headers)) == 400  # already throttled: no change
    assert client.status(client.request(f"/3/device/{TOKEN}", headers)) == 200
    client.read_until(lambda events: stream_limits(events) == [1, 1000, 1, 1000])
    assert apns_emulator.stats().throttles == 1


@apns_options(auth="none", apple_throttle=True, max_concurrent_streams=500)
def test_apple_throttle_without_token_auth_starts_at_the_configured_limit(
    apns_emulator: ApnsEmulator, raw_client: Any
) -> None:
    client = raw_client(apns_emulator)
    client.read_until(lambda events: stream_limits(events) == [500])
    assert client.status(client.request("/3/device/nothex", {"apns-topic": TOPIC})) == 400
    client.read_until(lambda events: stream_limits(events) == [500, 1])


@apns_options(auth="none", goaway_after_requests=2)
def test_goaway_shutdown_once_after_n_requests(
    apns_emulator: ApnsEmulator, raw_client: Any, client_for: Any
) -> None:
    client = raw_client(apns_emulator)
    headers = {"apns-topic": TOPIC}
    assert client.status(client.request(f"/3/device/{TOKEN}", headers)) == 200
    second = client.request(f"/3/device/{TOKEN}", headers)
    client.read_until(lambda events: any(isinstance(e, h2.events.ConnectionTerminated) for e in events))
    (goaway,) = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert (goaway.error_code, goaway.last_stream_id, goaway.additional_data) == (
        0,
        second,
        b'{"reason":"Shutdown"}',
    )
    assert client.status(second) == 200
    client.read_until(lambda events: False)
    assert client.closed
    other = client_for(apns_emulator)
    assert [push(other, apns_emulator).status_code for _ in range(3)] == [200, 200, 200]
    stats = apns_emulator.stats()
    assert (stats.goaways, stats.accepted, stats.connections_opened) == (1, 5, 2)


@apns_options(auth="none", close_after_requests=2)
def test_connections_close_after_n_requests(apns_emulator: ApnsEmulator, raw_client: Any) -> None:
    client = raw_client(apns_emulator)
    assert client.status(client.request(f"/3/device/{TOKEN}", {"apns-topic": TOPIC})) == 200
    assert client.status(client.request(f"/3/device/{TOKEN}", {"apns-topic": TOPIC})) == 200
    client.read_until(lambda events: False)
    assert client.closed
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)
    client.close()  # TLS shutdown completes, and the server forgets the connection, once both sides close
    until(lambda: apns_emulator.stats().connections_open == 0, timeout_s=5)
    assert apns_emulator.stats().requests_by_connection == {1: 2}


@apns_options(auth="none")
def test_concurrent_streams_are_observed(apns_emulator: ApnsEmulator, raw_client: Any) -> None:
    client = raw_client(apns_emulator)
    client.read_until(lambda events: stream_limits(events) == [1000])
    streams = [client.request(f"/3/device/{TOKEN}", {"apns-topic": TOPIC}, send=False) for _ in range(5)]
    client.sock.sendall(client.h2.data_to_send())
    assert [client.status(stream_id) for stream_id in streams] == [200] * 5
    assert apns_emulator.stats().max_concurrent_streams == 5


@apns_options(auth="none", max_concurrent_streams=2)
def test_exceeding_the_stream_limit_gets_goaway(apns_emulator: ApnsEmulator, raw_client: Any) -> None:
    client = raw_client(apns_emulator)  # sends before it has read the server's limit, so h2 lets it
    for _ in range(3):
        client.request(f"/3/device/{TOKEN}", {"apns-topic": TOPIC}, send=False)
    client.sock.sendall(client.h2.data_to_send())
    client.read_until(lambda events: any(isinstance(e, h2.events.ConnectionTerminated) for e in events))
    assert apns_emulator.stats().accepted == 0


@apns_options(auth="none")
def test_stats_and_notifications_are_served_over_http2(apns_emulator: ApnsEmulator, client_for: Any) -> None:
    client = client_for(apns_emulator)
    assert push(client, apns_emulator).status_code == 200
    assert push(client, apns_emulator, token="abcd").status_code == 200
    assert push(client, apns_emulator, token="zz").status_code == 400
    stats = client.get("/emulator/stats").json()
    assert (stats["accepted"], stats["rejected"], stats["requests_by_connection"]) == (
        2,
        {"BadDeviceToken": 1},
        {"1": 3},
    )
    (notification,) = client.get("/emulator/notifications", params={"token": "abcd"}).json()
    assert (notification["token"], notification["payload"]) == ("abcd", {"aps": {"alert": "hi"}})
    assert notification["headers"]["apns-topic"] == TOPIC
    assert len(client.get("/emulator/notifications").json()) == 2
    assert client.get("/emulator/nothing").status_code == 404


@apns_options(auth="none")
def test_bodies_larger_than_a_flow_control_window_pass_both_ways(
    apns_emulator: ApnsEmulator, client_for: Any, raw_client: Any
) -> None:
    client = client_for(apns_emulator)
    assert push(client, apns_emulator, body=b"x" * 200_000).status_code == 413
    payload = json.dumps({"aps": {"alert": "y" * 3000}}).encode()
    assert {push(client, apns_emulator, body=payload).status_code for _ in range(40)} == {200}
    listing = raw_client(apns_emulator)  # h2's default 64 KiB window: the answer needs WINDOW_UPDATEs
    body = listing.body(listing.request("/emulator/notifications", {}, body=b""))
    assert len(body) > 100_000
    assert len(json.loads(body)) == 40


def test_emulator_runs_in_an_async_with_block(tmp_path: Path) -> None:
    async def run() -> tuple[ApnsEmulator, int]:
        async with ApnsEmulator(directory=tmp_path, auth="none") as emulator:
            assert emulator.url == f"https://127.0.0.1:{emulator.port}"
            async with httpx2.AsyncClient(http2=True, verify=client_ssl_context(emulator.ca_file)) as client:
                response = await client.post(
                    f"{emulator.url}/3/device/{TOKEN}", content=PAYLOAD, headers={"apns-topic": TOPIC}
                )
        return emulator, response.status_code

    emulator, status = asyncio.run(run())
    assert status == 200
    assert emulator.stats().accepted == 1


# ---------------------------------------------------------------- FCM


def oauth_assertion(
    emulator: FcmEmulator, key_pem: str | None = None, iat_s: int = 0, lifetime_s: int = 3600, **claims: Any
) -> str:
    """A JWT-bearer assertion as google-auth builds it; `iat_s` shifts `iat` from now."""
    document = json.loads(emulator.service_account_file.read_text())
    iat = int(time.time()) + iat_s
    base = {"iss": document["client_email"], "scope": FCM_SCOPE, "aud": emulator.token_url, "iat": iat}
    return jwt.encode(
        {**base, "exp": iat + lifetime_s, **claims}, key_pem or document["private_key"], algorithm="RS256"
    )


def access_token(client: httpx2.Client, emulator: FcmEmulator) -> str:
    grant = {
        "grant_type": JWT_BEARER,
        "assertion": oauth_assertion(emulator),
    }
    response = client.post("/token", data=grant)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def send(
    client: httpx2.Client, emulator: FcmEmulator, body: Any, token: str | None = None, project: str = ""
) -> Any:
    headers = {"authorization": f"Bearer {token or access_token(client, emulator)}"}
    url = f"/v1/projects/{project or emulator.project_id}/messages:send"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(url, content=content, headers=headers)


def fcm_error(status: int, rpc_status: str, message: str, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if code is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
        ]
    return {"error": error}


def test_fcm_oauth_then_send_is_accepted_and_recorded(fcm_emulator: FcmEmulator, client_for: Any) -> None:
    client = client_for(fcm_emulator)
    grant = {
        "grant_type": JWT_BEARER,
        "assertion": oauth_assertion(fcm_emulator),
    }
    token_response = client.post("/token", data=grant)
    assert token_response.http_version == "HTTP/2"
    body = token_response.json()
    assert (body["expires_in"], body["token_type"]) == (3600, "Bearer")
    message = {"token": "device-1", "data": {"alert": "hi"}, "android": {"priority": "HIGH", "ttl": "3.5s"}}
    response = send(client, fcm_emulator, {"message": message}, token=body["access_token"])
    assert response.status_code == 200, response.text
    assert response.json()["name"].startswith("projects/pushgw-emulator/messages/0:")
    (kept,) = fcm_emulator.messages("device-1")
    assert (kept.name, kept.message) == (response.json()["name"], message)
    stats = fcm_emulator.stats()
    assert (stats.accepted, stats.oauth_tokens_issued) == (1, 1)


def test_fcm_token_endpoint_speaks_http11_for_google_auth(fcm_emulator: FcmEmulator, client_for: Any) -> None:
    from google.oauth2 import service_account

    client = client_for(fcm_emulator, http2=False)

    class HttpxRequest:
        """google-auth's transport interface over httpx2 (its own needs `requests`)."""

        def __call__(
            self, url: str, method: str = "GET", body: Any = None, headers: Any = None, **_: Any
        ) -> Any:
            reply = client.request(method, url, content=body, headers=headers)
            assert reply.http_version == "HTTP/1.1"
            return SimpleNamespace(status=reply.status_code, headers=dict(reply.headers), data=reply.content)

    credentials = service_account.Credentials.from_service_account_file(
        str(fcm_emulator.service_account_file), scopes=[FCM_SCOPE]
    )
    credentials.refresh(HttpxRequest())
    response = send(
        client_for(fcm_emulator), fcm_emulator, {"message": {"token": "t"}}, token=credentials.token
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("fields", "claims", "error"),
    [
        ({"grant_type": "client_credentials"}, {}, "unsupported_grant_type"),
        ({"assertion": "not-a-jwt"}, None, "invalid_grant"),
        ({}, {"aud": "https://example.com/token"}, "invalid_grant"),
        ({}, {"iss": "stranger@example.com"}, "invalid_grant"),
        ({}, {"lifetime_s": 7200}, "invalid_grant"),
        ({}, {"iat_s": -7200}, "invalid_grant"),
        ({}, {"scope": "https://www.googleapis.com/auth/cloud-platform"}, "invalid_scope"),
    ],
    ids=["grant-type", "garbage", "audience", "unknown-account", "lifetime-over-1h", "expired", "scope"],
)
def test_fcm_token_endpoint_rejects_bad_assertions(
    fcm_emulator: FcmEmulator,
    client_for: Any,
    fields: dict[str, str],
    claims: dict[str, Any] | None,
    error: str,
) -> None:
    form = {"grant_type": JWT_BEARER, **fields}
    if claims is not None:
        form["assertion"] = oauth_assertion(fcm_emulator, **claims)
    response = client_for(fcm_emulator).post("/token", data=form)
    assert (response.status_code, response.json()["error"]) == (400, error)
    assert fcm_emulator.stats().oauth_tokens_issued == 0


def test_fcm_assertion_signed_by_another_key_is_refused(
    fcm_emulator: FcmEmulator, client_for: Any, tmp_path: Path
) -> None:
    impostor = write_service_account(tmp_path / "sa.json", token_uri=fcm_emulator.token_url, project_id="x")
    other_key = json.loads(impostor.path.read_text())["private_key"]
    fields = {
        "grant_type": JWT_BEARER,
        "assertion": oauth_assertion(fcm_emulator, key_pem=other_key),
    }
    response = client_for(fcm_emulator).post("/token", data=fields)
    assert response.json() == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}


@pytest.mark.parametrize("token", [None, "ya29.unknown"], ids=["missing", "unknown"])
def test_fcm_send_without_valid_access_token_gets_401(
    fcm_emulator: FcmEmulator, client_for: Any, token: str | None
) -> None:
    client = client_for(fcm_emulator)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = client.post(
        f"/v1/projects/{fcm_emulator.project_id}/messages:send",
        json={"message": {"token": "t"}},
        headers=headers,
    )
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    assert fcm_emulator.stats().rejected == {"UNAUTHENTICATED": 1}


@fcm_options(access_token_ttl_s=-1)
def test_fcm_expired_access_token_gets_401(fcm_emulator: FcmEmulator, client_for: Any) -> None:
    response = send(client_for(fcm_emulator), fcm_emulator, {"message": {"token": "t"}})
    assert response.status_code == 401


def test_fcm_wrong_project_gets_403(fcm_emulator: FcmEmulator, client_for: Any) -> None:
    response = send(client_for(fcm_emulator), fcm_emulator, {"message": {"token": "t"}}, project="other")
    assert (response.status_code, response.json()["error"]["status"]) == (403, "PERMISSION_DENIED")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "Invalid JSON payload"),
        ({"msg": {}}, "invalid argument"),
        ({"message": {"token": "t"}, "dry_run": True}, 'Unknown name "dry_run"'),
        ({"message": {"data": {"a": "b"}}}, "Exactly one of token, topic or condition"),
        ({"message": {"token": "t", "topic": "news"}}, "Exactly one of token, topic or condition"),
        ({"message": {"token": "t", "data": {"badge": 1}}}, "message.data[badge]"),
        ({"message": {"token": "t", "android": {"data": {"sound": None}}}}, "message.android.data[sound]"),
        ({"message": {"token": "t", "data": {"from": "x"}}}, "from"),
        ({"message": {"token": "t", "data": {"google.sent": "x"}}}, "google.sent"),
        ({"message": {"token": "t", "data": {"gcm.n": "x"}}}, "gcm.n"),
        ({"message": {"token": "t", "data": {"message_type": "x"}}}, "message_type"),
        ({"message": {"token": "t", "android": {"priority": "URGENT"}}}, "message.android.priority"),
        ({"message": {"token": "t", "android": {"ttl": "10"}}}, "message.android.ttl"),
        ({"message": {"token": "t", "android": {"ttl": "1.1234567890s"}}}, "message.android.ttl"),
        ({"message": {"token": "t", "android": {"ttl": "2419201s"}}}, "4 weeks"),
        ({"message": {"token": "t", "data": {"x": "y" * 4100}}}, "too big"),
        ({"message": {"topic": "news", "data": {"x": "y" * 2100}}}, "too big"),
    ],
    ids=["json", "no-message", "unknown-field", "no-target", "two-targets", "data-int", "android-data-null",
         "from", "google", "gcm", "message-type", "priority", "ttl-unit", "ttl-digits", "ttl-max", "size", "topic-size"],
)  # fmt: skip
def test_fcm_invalid_messages_get_400_invalid_argument(
    fcm_emulator: FcmEmulator, client_for: Any, body: Any, words: str
) -> None:
    response = send(client_for(fcm_emulator), fcm_emulator, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert words in error["message"]
    assert error["details"][0] == {
        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
        "errorCode": "INVALID_ARGUMENT",
    }
    assert fcm_emulator.messages() == []


def test_fcm_limits_are_inclusive(fcm_emulator: FcmEmulator, client_for: Any) -> None:
    client = client_for(fcm_emulator)
    token = access_token(client, fcm_emulator)
    ok = {
        "token": "t",
        "android": {"priority": "NORMAL", "ttl": "2419200s", "data": {"k": "v"}},
        "data": {"a": "b"},
    }
    assert send(client, fcm_emulator, {"message": ok}, token=token).status_code == 200
    assert (
        send(client, fcm_emulator, {"message": {"condition": "'a' in topics"}}, token=token).status_code
        == 200
    )


@fcm_options(
    token_rules={"gone": "UNREGISTERED", "other": "SENDER_ID_MISMATCH", "junk": "INVALID_ARGUMENT",
                 "quota": "QUOTA_EXCEEDED", "down": "UNAVAILABLE", "oops": "INTERNAL"},
    retry_after_s=120,
)  # fmt: skip
@pytest.mark.parametrize(
    ("token", "expected", "retry_after"),
    [
        ("gone1", fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"), None),
        ("other1", fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"), None),
        (
            "junk1",
            fcm_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
            ),
            None,
        ),
        (
            "quota1",
            fcm_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Send requests'.",
                "QUOTA_EXCEEDED",
            ),
            "120",
        ),
        (
            "down1",
            fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"),
            "120",
        ),
        ("oops1", fcm_error(500, "INTERNAL", "Internal error encountered.", "INTERNAL"), None),
    ],
    ids=["unregistered", "sender-id-mismatch", "invalid-token", "quota", "unavailable", "internal"],
)
def test_fcm_token_prefix_rules_answer_fcm_errors(
    fcm_emulator: FcmEmulator, client_for: Any, token: str, expected: dict[str, Any], retry_after: str | None
) -> None:
    response = send(client_for(fcm_emulator), fcm_emulator, {"message": {"token": token}})
    assert (response.status_code, response.json()) == (expected["error"]["code"], expected)
    assert response.headers.get("retry-after") == retry_after
    code = expected["error"]["details"][0]["errorCode"]
    assert fcm_emulator.stats().rejected == {code: 1}


def test_fcm_validate_only_is_not_recorded(fcm_emulator: FcmEmulator, client_for: Any) -> None:
    response = send(
        client_for(fcm_emulator), fcm_emulator, {"message": {"token": "t"}, "validate_only": True}
    )
    assert response.json() == {"name": "projects/pushgw-emulator/messages/fake_message_id"}
    assert fcm_emulator.messages() == []


def test_fcm_stats_and_messages_are_served(fcm_emulator: FcmEmulator, client_for: Any) -> None:
    client = client_for(fcm_emulator)
    assert send(client, fcm_emulator, {"message": {"token": "t1", "data": {"a": "b"}}}).status_code == 200
    stats = client.get("/emulator/stats").json()
    assert (stats["accepted"], stats["oauth_tokens_issued"], stats["connections_opened"]) == (1, 1, 1)
    (message,) = client.get("/emulator/messages", params={"token": "t1"}).json()
    assert message["message"] == {"token": "t1", "data": {"a": "b"}}


# ---------------------------------------------------------------- `pushgw emulate`


def test_emulate_parser_reads_options() -> None:
    parser = argparse.ArgumentParser()
    add_emulate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "emulate",
            "apns",
            "--port",
            "0",
            "--throttle",
            "--reject",
            "bad=BadDeviceToken",
            "--reject",
            "slow=delay:50",
        ]
    )
    assert (args.emulator, args.port, args.throttle, args.auth, args.config) == (
        "apns",
        0,
        True,
        "token",
        None,
    )
    assert dict(args.reject) == {"bad": TokenRule(reason="BadDeviceToken"), "slow": TokenRule(delay_ms=50)}
    assert args.dir == Path(".pushgw/emulators/apns")
    fcm = parser.parse_args(["emulate", "fcm", "--reject", "gone=UNREGISTERED", "--project", "p1"])
    assert (fcm.emulator, fcm.project, fcm.port, dict(fcm.reject)) == (
        "fcm",
        "p1",
        8443,
        {"gone": TokenRule("UNREGISTERED")},
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["emulate", "apns", "--reject", "bad=NoSuchReason"])


@pytest.mark.parametrize("kind", ["apns", "fcm"])
def test_run_emulator_serves_until_sigterm_then_exits_0(kind: str, tmp_path: Path, client_for: Any) -> None:
    code = "import sys; from pathlib import Path; from pushgw.emulators import run_emulator; "
    code += (
        f"sys.exit(run_emulator({kind!r}, '127.0.0.1', 0, Path(sys.argv[1]), {{'summary_interval_s': 0.1}}))"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        url = lines[0].split(" on ")[1].split(" ")[0]
        assert lines[1].strip() == f"CA certificate:  {tmp_path / 'ca.pem'}"
        client = client_for(argparse.Namespace(url=url, ca_file=tmp_path / "ca.pem"))
        assert client.get("/emulator/stats").json()["accepted"] == 0
        output = []
        until(
            lambda: output.append(process.stdout.readline()) or "emulator_summary" in output[-1], timeout_s=10
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
