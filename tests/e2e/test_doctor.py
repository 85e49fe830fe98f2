"""`pushgw doctor` as a real process: each broken part reported with its fix, all OK on a good config."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pushgw.connections import create_broker
from pushgw.emulators.tls import write_apns_key, write_server_certificates, write_service_account
from pushgw.settings import QueueSettings
from tests.fixtures.certificates import write_certificate
from tests.fixtures.mongo import MongoServer
from tests.fixtures.ports import free_port
from tests.fixtures.processes import ProcessFactory
from tests.fixtures.rabbit import RABBIT_URL, RabbitAdmin


def write_config(tmp_path: Path, mongo_uri: str, queue_url: str, prefix: str, extra: str = "") -> Path:
    path = tmp_path / "pushgw.toml"
    path.write_text(
        f'[mongo]\nuri = "{mongo_uri}"\ntimeout_ms = 2000\n[queue]\nurl = "{queue_url}"\nprefix = "{prefix}"\n'
        f'[[apps]]\napp_id = "app1"\nmaster_key = "master-secret-1"\n{extra}'
    )
    return path


def line_of(output: str, name: str) -> str:
    """The report line of check `name` and its fix line, if any."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.split()[1:2] == [name]:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            return line + ("\n" + following if following.strip().startswith("fix:") else "")
    raise AssertionError(f"no line for {name} in:\n{output}")


def declare_queues(prefix: str) -> None:
    async def declare() -> None:
        broker = create_broker(QueueSettings(url=RABBIT_URL, prefix=prefix))
        await broker.start()
        assert await broker.is_ready()
        await broker.close()

    asyncio.run(declare())


def good_credentials(tmp_path: Path) -> str:
    key = write_apns_key(tmp_path / "AuthKey_ABC123DEFG.p8")
    certificate = write_certificate(
        tmp_path / "apns-cert.pem",
        not_before=datetime.now(UTC) - timedelta(days=1),
        not_after=datetime.now(UTC) + timedelta(days=200),
    )
    account = write_service_account(
        tmp_path / "firebase.json", token_uri="https://oauth2.example/token", project_id="proj-1"
    )
    ppns = write_server_certificates(tmp_path / "ppns")
    return (
        f'[[apps.apns]]\nbundle_ids = ["com.example.app"]\nkey_file = "{key}"\nkey_id = "ABC123DEFG"\n'
        f'team_id = "TEAM123456"\n'
        f'[[apps.apns]]\nbundle_ids = ["com.example.other"]\ncertificate_file = "{certificate}"\n'
        f'[apps.fcm]\nservice_account_file = "{account.path}"\n'
        f'[ppns]\ncert_file = "{ppns.cert_file}"\nkey_file = "{ppns.key_file}"\n'
    )


def test_good_config_passes_every_check(
    pushgw_processes: ProcessFactory, tmp_path: Path, mongo_server: MongoServer, rabbit: RabbitAdmin
) -> None:
    declare_queues(rabbit.prefix)
    config = write_config(tmp_path, mongo_server.uri, RABBIT_URL, rabbit.prefix, good_credentials(tmp_path))
    result = pushgw_processes.run("doctor", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 7 checks passed" in result.stdout
    for name in ("config", "mongo", "queue", "apps[app1].apns[0]", "apps[app1].apns[1]", "apps[app1].fcm"):
        assert line_of(result.stdout, name).startswith("OK "), result.stdout
    assert "signs an ES256 JWT" in line_of(result.stdout, "apps[app1].apns[0]")
    assert "days left" in line_of(result.stdout, "apps[app1].apns[1]")
    assert "pushgw-emulator@proj-1.iam.gserviceaccount.com signs" in line_of(result.stdout, "apps[app1].fcm")
    assert "valid until" in line_of(result.stdout, "ppns")
    assert f"{rabbit.prefix}.plan 0" in line_of(result.stdout, "queue")
    assert "guest:guest" not in result.stdout + result.stderr
    assert "master-secret-1" not in result.stdout + result.stderr


def test_bad_mongo_uri_is_reported_with_its_fix(pushgw_processes: ProcessFactory, tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://db.example:27017", "memory://", "p")
    result = pushgw_processes.run("doctor", "--config", str(config))
    assert result.returncode == 1
    report = line_of(result.stdout, "mongo")
    assert report.startswith("FAIL")
    assert "mongo.uri is not usable" in report and "Invalid URI scheme" in report
    assert "fix: check mongo.uri" in report
    assert line_of(result.stdout, "queue").startswith("OK ")


def test_unreachable_mongo_and_broker_are_reported(pushgw_processes: ProcessFactory, tmp_path: Path) -> None:
    closed = free_port()
    config = write_config(
        tmp_path, f"mongodb://127.0.0.1:{closed}/?directConnection=true",
        f"amqp://guest:guest@127.0.0.1:{closed}/", "p",
    )  # fmt: skip
    result = pushgw_processes.run("doctor", "--config", str(config))
    assert result.returncode == 1
    mongo = line_of(result.stdout, "mongo")
    assert mongo.startswith("FAIL") and f"no answer from mongodb://127.0.0.1:{closed}" in mongo
    queue = line_of(result.stdout, "queue")
    assert queue.startswith("FAIL") and f"cannot connect to amqp://***@127.0.0.1:{closed}/" in queue
    assert "Connection refused" in queue and "fix: check queue.url" in queue
    assert "1 of" not in result.stdout and "2 of 3 checks failed" in result.stdout


def test_missing_queues_name_the_command_that_declares_them(
    pushgw_processes: ProcessFactory, tmp_path: Path, mongo_server: MongoServer, rabbit: RabbitAdmin
) -> None:
    config = write_config(tmp_path, mongo_server.uri, RABBIT_URL, rabbit.prefix)
    result = pushgw_processes.run("doctor", "--config", str(config))
    assert result.returncode == 1
    queue = line_of(result.stdout, "queue")
    assert queue.startswith("FAIL") and f"queues missing: {rabbit.prefix}.plan" in queue
    assert "start `pushgw serve` or `pushgw worker` once" in queue


def test_broken_credentials_each_get_their_own_failure(
    pushgw_processes: ProcessFactory, tmp_path: Path, mongo_server: MongoServer
) -> None:
    not_a_key = tmp_path / "AuthKey_BROKEN.p8"
    not_a_key.write_text("this is the download page, not the key\n")
    expired = write_certificate(
        tmp_path / "expired.pem",
        not_before=datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime(2024, 3, 1, tzinfo=UTC),
    )
    account = tmp_path / "firebase.json"
    account.write_text('{"type": "service_account", "project_id": "p"}')
    credentials = (
        f'[[apps.apns]]\nbundle_ids = ["com.example.a"]\nkey_file = "{not_a_key}"\nkey_id = "K"\n'
        f'team_id = "T"\n'
        f'[[apps.apns]]\nbundle_ids = ["com.example.b"]\ncertificate_file = "{expired}"\n'
        f'[apps.fcm]\nservice_account_file = "{account}"\n'
        f'[ppns]\ncert_file = "{tmp_path}/missing/ppns.pem"\nkey_file = "{tmp_path}/missing/ppns-key.pem"\n'
    )
    config = write_config(tmp_path, mongo_server.uri, "memory://", "p", credentials)
    result = pushgw_processes.run("doctor", "--config", str(config))
    assert result.returncode == 1, result.stdout
    p8 = line_of(result.stdout, "apps[app1].apns[0]")
    assert p8.startswith("FAIL") and f"{not_a_key} is not an ES256 (.p8) private key" in p8
    assert "fix: download the .p8 key from Apple Developer" in p8
    certificate = line_of(result.stdout, "apps[app1].apns[1]")
    assert certificate.startswith("FAIL") and "expired on 2024-03-01" in certificate
    assert "fix: renew the APNs certificate for com.example.b" in certificate
    fcm = line_of(result.stdout, "apps[app1].fcm")
    assert fcm.startswith("FAIL") and "lacks private_key, client_email, token_uri" in fcm
    ppns = line_of(result.stdout, "ppns")
    assert ppns.startswith("FAIL") and f"certificate file {tmp_path}/missing/ppns.pem does not exist" in ppns
    assert "fix: point ppns.cert_file at the server certificate" in ppns
    assert line_of(result.stdout, "mongo").startswith("OK ")
    assert "4 of 7 checks failed" in result.stdout


def test_config_that_does_not_load_is_one_failed_check(
    pushgw_processes: ProcessFactory, tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[console]\npath = "no-slash"\n[[apps]]\napp_id = "a"\nmaster_key = "m"\n')
    result = pushgw_processes.run("doctor", "--config", str(config))
    assert result.returncode == 1
    assert line_of(result.stdout, "config").startswith("FAIL")
    assert "console.path" in result.stdout
