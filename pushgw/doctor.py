"""`pushgw doctor`: one line per check (config, MongoDB, broker, each credential), with a fix per failure."""

from __future__ import annotations

import re
import sys
from typing import TextIO

from pymongo.errors import PyMongoError

from pushgw.credential_checks import Check, check_credentials
from pushgw.mongo import EmbeddedMongo, create_client
from pushgw.queue_depths import BrokerUnreachable, QueueProbe
from pushgw.settings import Settings

_PROBE_TIMEOUT_MS = 3000
_USERINFO = re.compile(r"//[^/@\s]*@")


async def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order an operator fixes things: config, database, broker, credentials."""
    return [
        check_config(settings),
        await check_mongo(settings),
        await check_broker(settings),
        *check_credentials(settings),
    ]


def print_checks(checks: list[Check], out: TextIO = sys.stdout) -> int:
    """Print the report; exit code 1 when any check failed."""
    width = max(len(check.name) for check in checks)
    for check in checks:
        mark = "OK  " if check.ok else "FAIL"
        mark = "WARN" if check.ok and check.warning else mark
        out.write(f"{mark}  {check.name.ljust(width)}  {check.detail}\n")
        if check.fix and (not check.ok or check.warning):
            out.write(f"      {' ' * width}  fix: {check.fix}\n")
    failed = sum(not check.ok for check in checks)
    out.write(
        f"{failed} of {len(checks)} checks failed\n" if failed else f"all {len(checks)} checks passed\n"
    )
    return 1 if failed else 0


def config_failure(message: str, out: TextIO = sys.stdout) -> int:
    """The report when the configuration does not even load (nothing else can be checked)."""
    fix = "correct the keys named above (docs/configuration.md lists every setting)"
    return print_checks([Check("config", False, message.replace("\n", "\n      "), fix)], out)


def check_config(settings: Settings) -> Check:
    if not settings.apps:
        return Check("config", False, "no [[apps]] configured",
                     "add an [[apps]] section with app_id, master_key and mongo_database")  # fmt: skip
    without = [
        app.app_id for app in settings.apps
        if not app.apns and app.fcm is None and not settings.recording.transports
    ]  # fmt: skip
    detail = f"{len(settings.apps)} app(s): {', '.join(app.app_id for app in settings.apps)}"
    if without:
        return Check("config", True, f"{detail}; no APNs/FCM credential for {', '.join(without)}",
                     "add [[apps.apns]] / [apps.fcm] (docs/providers.md), or iOS and Android pushes fail",
                     warning=True)  # fmt: skip
    return Check("config", True, detail)


async def check_mongo(settings: Settings) -> Check:
    uri = settings.mongo.uri
    if uri is None:
        embedded = EmbeddedMongo(settings.mongo)
        state = "answers" if await _pings(embedded.uri) is None else "is not running (serve/dev start it)"
        return Check("mongo", True, f"embedded SecantusDB on port {settings.mongo.embedded_port} {state}")
    fix = "check mongo.uri (scheme mongodb://, host, port, user, password) and that MongoDB is running"
    try:
        problem = await _pings(uri)
    except PyMongoError as error:  # a malformed URI fails before any connection
        return Check("mongo", False, f"mongo.uri is not usable: {_redact(str(error))}", fix)
    if problem is not None:
        return Check("mongo", False, f"no answer from {_redact(uri)}: {_redact(problem)}", fix)
    return Check("mongo", True, f"{_redact(uri)} answers ping")


async def _pings(uri: str) -> str | None:
    """None when the server answers `ping`, else the error's text."""
    client = create_client(uri, _PROBE_TIMEOUT_MS)
    try:
        await client.admin.command("ping")
    except PyMongoError as error:
        return str(error).split(", Timeout:")[0].split(" (configured timeouts")[0]
    finally:
        await client.close()
    return None


async def check_broker(settings: Settings) -> Check:
    queue = settings.queue
    if queue.is_memory:
        return Check("queue", True, "memory:// (in-process; only `pushgw dev` can use it)")
    probe = QueueProbe(queue, timeout_s=_PROBE_TIMEOUT_MS / 1000)
    try:
        depths = await probe.depths()
    except BrokerUnreachable as error:
        return Check("queue", False, f"cannot connect to {_redact(queue.url)}: {error}",
                     "check queue.url (host, port, vhost, user) and that RabbitMQ is running")  # fmt: skip
    finally:
        await probe.close()
    missing = [name for name, depth in depths.items() if depth is None]
    if missing:
        return Check("queue", False, f"{_redact(queue.url)}: queues missing: {', '.join(missing)}",
                     f"start `pushgw serve` or `pushgw worker` once with queue.prefix = {queue.prefix!r}: "
                     "they declare the queues")  # fmt: skip
    counts = ", ".join(f"{name} {depth}" for name, depth in depths.items())
    return Check("queue", True, f"{_redact(queue.url)}: {counts} message(s) ready")


def _redact(text: str) -> str:
    """Credentials in URIs (`//user:password@host`) never reach the terminal."""
    return _USERINFO.sub("//***@", text)
