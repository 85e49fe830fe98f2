"""`pushgw send` and `pushgw push list`: send a push through the intake and follow it; list recent pushes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import httpx2

from pushgw import push_commands
from pushgw.connections import Connections
from pushgw.mongo import app_database
from pushgw.push_listing import format_table, recent_pushes
from pushgw.push_status import COLLECTION
from pushgw.settings import AppSettings, ConfigError, Settings

REJECTED = 3  # exit code: the intake answered with a Parse error


def add_send_arguments(send: argparse.ArgumentParser) -> None:
    audience = send.add_argument_group("audience (one of)")
    audience.add_argument("--channels", metavar="A,B", help="comma-separated channel names")
    audience.add_argument(
        "--where", metavar="JSON", help='an _Installation query, e.g. \'{"deviceType":"ios"}\''
    )
    content = send.add_argument_group("content (one of)")
    content.add_argument("--alert", metavar="TEXT", help="the alert text")
    content.add_argument(
        "--data", metavar="JSON", help='the Parse push data, e.g. \'{"alert":"hi","badge":1}\''
    )
    send.add_argument("--app", metavar="ID", help="the app id (default: the only or first configured app)")
    send.add_argument("--url", help="the intake, e.g. http://host:1337/parse (default: from the config)")
    send.add_argument("--no-wait", action="store_true", help="print the push id and exit once accepted")


def push_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /push body from the flags; ConfigError (exit 2) for unusable flags."""
    body: dict[str, Any] = {}
    if args.channels is not None:
        body["channels"] = [channel.strip() for channel in args.channels.split(",") if channel.strip()]
    if args.where is not None:
        body["where"] = _json_object(args.where, "--where")
    if not body:
        raise ConfigError("send: give --channels or --where (use --where '{}' to address every installation)")
    if (args.alert is None) == (args.data is None):
        raise ConfigError("send: give exactly one of --alert and --data")
    body["data"] = {"alert": args.alert} if args.alert is not None else _json_object(args.data, "--data")
    return body


def choose_app(settings: Settings, app_id: str | None) -> AppSettings:
    if app_id is not None:
        app = settings.app(app_id)
        if app is None:
            raise ConfigError(f"--app {app_id}: no such app in the configuration")
        return app
    if not settings.apps:
        raise ConfigError("apps: no [[apps]] configured; add one with app_id and master_key")
    return settings.apps[0]


def intake_url(settings: Settings, url: str | None) -> str:
    """`--url` (a mount or the full /push URL), else this config's own intake."""
    if url is None:
        host = settings.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        host = f"[{host}]" if ":" in host else host
        url = f"http://{host}:{settings.http.port}{settings.http.mounts[0]}"
    url = url.rstrip("/")
    return url if url.endswith("/push") else url + "/push"


async def send_push(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Exit 0 succeeded, 1 failed, 2 usage or config, 3 rejected by the intake (its Parse error printed)."""
    body = push_body(args)
    app = choose_app(settings, args.app)
    url = intake_url(settings, args.url)
    headers = {
        "X-Parse-Application-Id": app.app_id,
        "X-Parse-Master-Key": app.master_key.get_secret_value(),
        "Content-Type": "application/json",
    }
    try:
        async with httpx2.AsyncClient(timeout=30, trust_env=False) as client:
            response = await client.post(url, content=json.dumps(body), headers=headers)
    except httpx2.HTTPError as error:
        raise ConfigError(
            f"send: cannot reach the intake at {url}: {error}; start it or pass --url"
        ) from None
    if response.status_code != 200:
        print(f"pushgw send: rejected by the intake (HTTP {response.status_code}): {_parse_error(response)}",
              file=sys.stderr)  # fmt: skip
        return REJECTED
    push_id = response.headers.get("x-parse-push-status-id", "")
    out.write(f"push {push_id} accepted\n")
    if args.no_wait:
        return 0
    connections = await Connections.open(settings)
    try:
        return await push_commands.push_status(settings, connections, push_id, wait=True, out=out)
    finally:
        await connections.close()


def _parse_error(response: httpx2.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return response.text.strip()[:500] or "(empty body)"
    if isinstance(answer, dict) and "code" in answer:
        return f"code {answer['code']}: {answer.get('error') or answer.get('message')}"
    return json.dumps(answer)[:500]


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"send: {flag} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"send: {flag} must be a JSON object")
    return value


async def list_pushes(
    settings: Settings, connections: Connections, args: argparse.Namespace, out: TextIO = sys.stdout
) -> int:
    """`pushgw push list`: the newest pushes of every configured app (or `--app`), as a table or JSON."""
    apps = [choose_app(settings, args.app)] if args.app else settings.apps
    pushes: list[dict[str, Any]] = []
    for app in apps:
        collection = app_database(connections.mongo, app).get_collection(app.collection_prefix + COLLECTION)
        found = await recent_pushes(collection, limit=args.limit, status=args.status)
        pushes.extend({**push, "app_id": app.app_id} for push in found)
    pushes.sort(key=lambda push: push["created"] or "", reverse=True)
    pushes = pushes[: args.limit]
    if args.json:
        out.write(json.dumps(pushes, indent=2) + "\n")
    elif pushes:
        out.write(format_table(pushes) + "\n")
    else:
        out.write("no pushes" + (f" with status {args.status}" if args.status else "") + "\n")
    return 0
