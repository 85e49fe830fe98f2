"""Offline credential checks: .p12/.pem certificates with their keys and dates, .p8 keys, service accounts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import load_pem_x509_certificate
from pydantic import SecretStr

from pushgw.credential_checks import check_apns, check_ppns
from pushgw.emulators.tls import write_apns_key, write_server_certificates
from pushgw.settings import ApnsSettings, PpnsSettings
from tests.fixtures.certificates import write_certificate

NOW = datetime.now(UTC)


def p12(tmp_path: Path, password: bytes) -> Path:
    pem = write_certificate(
        tmp_path / "c.pem", not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=90)
    )
    certificate = load_pem_x509_certificate(pem.read_bytes())
    key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    path = tmp_path / "apns.p12"
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"apns", key, certificate, None, serialization.BestAvailableEncryption(password)
        )
    )
    return path


def certificate_credential(path: Path, password: str | None = None, key: Path | None = None) -> ApnsSettings:
    return ApnsSettings(
        bundle_ids=["com.example.app"], certificate_file=path, certificate_key_file=key,
        certificate_password=SecretStr(password) if password else None,
    )  # fmt: skip


def test_p12_with_its_password_loads_and_reports_days_left(tmp_path: Path) -> None:
    check = check_apns(certificate_credential(p12(tmp_path, b"pw"), "pw"), "c", NOW)
    assert check.ok and not check.warning and "(89 days left)" in check.detail


def test_p12_with_the_wrong_password_fails(tmp_path: Path) -> None:
    wrong = check_apns(certificate_credential(p12(tmp_path, b"pw"), "nope"), "c", NOW)
    assert not wrong.ok and "not a PKCS#12 file or wrong password" in wrong.detail


def test_certificate_expiring_within_14_days_is_a_warning(tmp_path: Path) -> None:
    soon = write_certificate(
        tmp_path / "soon.pem", not_before=NOW - timedelta(days=300), not_after=NOW + timedelta(days=5)
    )
    check = check_apns(certificate_credential(soon), "c", NOW)
    assert check.ok and check.warning and "renew the APNs certificate" in check.fix


def test_pem_certificate_with_a_key_that_is_not_its_own_fails(tmp_path: Path) -> None:
    certificates = write_server_certificates(tmp_path / "tls")  # valid from 5 minutes ago
    now = datetime.now(UTC)  # not NOW: the module may have been imported more than 5 minutes ago
    ppns = PpnsSettings(cert_file=certificates.cert_file, key_file=certificates.ca_key_file)
    check = check_ppns(ppns, now)
    assert not check.ok and "certificate and key do not load together" in check.detail
    good = check_ppns(PpnsSettings(cert_file=certificates.cert_file, key_file=certificates.key_file), now)
    assert good.ok, good.detail


def test_p8_key_signs_and_a_certificate_in_its_place_does_not(tmp_path: Path) -> None:
    key = write_apns_key(tmp_path / "AuthKey.p8")
    token = ApnsSettings(bundle_ids=["a"], key_file=key, key_id="K", team_id="T")
    assert check_apns(token, "k", NOW).ok
    certificates = write_server_certificates(tmp_path / "tls")
    wrong = ApnsSettings(bundle_ids=["a"], key_file=certificates.cert_file, key_id="K", team_id="T")
    assert not check_apns(wrong, "k", NOW).ok
