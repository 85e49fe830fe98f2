"""Offline checks of every configured credential: APNs keys sign, certificates load and are in date, FCM
service accounts sign, the PPNS certificate matches its key (shared by `pushgw doctor` and the console)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs12
from google.auth import crypt

from pushgw.settings import ApnsSettings, AppSettings, FcmSettings, PpnsSettings, Settings

EXPIRY_WARNING_DAYS = 14  # the alert threshold in deploy/'s rules: renew before this
_SERVICE_ACCOUNT_FIELDS = ("type", "project_id", "private_key", "client_email", "token_uri")


@dataclass(frozen=True, slots=True)
class Check:
    """One line of `pushgw doctor`: what was checked, whether it passed, and what to do when it did not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # passed, but needs attention soon (a certificate expiring)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "warning": self.warning,
            "detail": self.detail,
            "fix": self.fix,
        }


class CredentialProblem(Exception):
    """A credential cannot be used; the message says what is wrong with it."""


def check_credentials(settings: Settings, now: datetime | None = None) -> list[Check]:
    """One check per APNs credential and FCM service account of every app, and the PPNS certificate."""
    moment = now or datetime.now(UTC)
    checks: list[Check] = []
    for app in settings.apps:
        checks.extend(_app_checks(app, moment))
    if settings.ppns is not None:
        checks.append(check_ppns(settings.ppns, moment))
    return checks


def _app_checks(app: AppSettings, now: datetime) -> Iterator[Check]:
    for index, credential in enumerate(app.apns):
        yield check_apns(credential, f"apps[{app.app_id}].apns[{index}]", now)
    if app.fcm is not None:
        yield check_fcm(app.fcm, f"apps[{app.app_id}].fcm")


def check_apns(credential: ApnsSettings, name: str, now: datetime) -> Check:
    topics = ",".join(credential.bundle_ids)
    if credential.key_file is not None:
        try:
            sign_apns_jwt(credential.key_file, credential.key_id or "", credential.team_id or "")
        except CredentialProblem as problem:
            return Check(name, False, f"{problem}", f"download the .p8 key from Apple Developer → Keys "
                         f"(Apple Push Notifications service) and set {name}.key_file to it")  # fmt: skip
        detail = f"token key {credential.key_id} of team {credential.team_id} signs an ES256 JWT ({topics})"
        return Check(name, True, detail)
    assert credential.certificate_file is not None  # ApnsSettings requires one of the two
    password = credential.certificate_password.get_secret_value() if credential.certificate_password else None
    try:
        certificate = load_certificate_and_key(
            credential.certificate_file, credential.certificate_key_file, password
        )
    except CredentialProblem as problem:
        return Check(name, False, str(problem), f"export the APNs certificate with its key (.p12 or .pem) "
                     f"and set {name}.certificate_file (and certificate_password)")  # fmt: skip
    return _dated(name, certificate, now, f"renew the APNs certificate for {topics} in Apple Developer")


def check_fcm(fcm: FcmSettings, name: str) -> Check:
    try:
        account = sign_with_service_account(fcm.service_account_file)
    except CredentialProblem as problem:
        return Check(name, False, str(problem), f"download a service account key (Firebase console → Project "
                     f"settings → Service accounts) and set {name}.service_account_file")  # fmt: skip
    project = fcm.project_id or account["project_id"]
    return Check(name, True, f"service account {account['client_email']} signs (project {project})")


def check_ppns(ppns: PpnsSettings, now: datetime) -> Check:
    name = "ppns"
    if ppns.plain_tcp:
        return Check(name, True, "plain TCP: TLS is terminated in front of `pushgw ppns`")
    if ppns.cert_file is None or ppns.key_file is None:
        return Check(name, False, "ppns.cert_file and ppns.key_file are not set",
                     "set ppns.cert_file and ppns.key_file (PEM), or ppns.plain_tcp = true behind a TLS "
                     "terminator")  # fmt: skip
    try:
        certificate = load_certificate_and_key(ppns.cert_file, ppns.key_file, None)
    except CredentialProblem as problem:
        return Check(name, False, str(problem), "point ppns.cert_file at the server certificate chain (PEM) "
                     "and ppns.key_file at its private key")  # fmt: skip
    return _dated(name, certificate, now, "renew the PPNS server certificate (the devices' pinned CA)")


def sign_apns_jwt(key_file: Path, key_id: str, team_id: str) -> str:
    """A provider token signed with the `.p8` key, as the APNs provider makes them."""
    pem = _read(key_file, "APNs key file")
    try:
        return jwt.encode({"iss": team_id, "iat": 0}, pem, algorithm="ES256", headers={"kid": key_id})
    except (ValueError, TypeError, jwt.PyJWTError) as error:
        raise CredentialProblem(
            f"{key_file} is not an ES256 (.p8) private key: {_first_line(error)}"
        ) from None


def sign_with_service_account(path: Path) -> dict[str, Any]:
    """The parsed service account, after its private key has signed a test message."""
    try:
        account = json.loads(_read(path, "service account file"))
    except ValueError as error:
        raise CredentialProblem(f"{path} is not JSON: {error}") from None
    if not isinstance(account, dict):
        raise CredentialProblem(f"{path} is not a service account (a JSON object)")
    missing = [field for field in _SERVICE_ACCOUNT_FIELDS if not account.get(field)]
    if missing:
        raise CredentialProblem(f"{path} lacks {', '.join(missing)}: not a service account key file")
    try:
        crypt.RSASigner.from_service_account_info(account).sign(b"pushgw doctor")  # type: ignore[no-untyped-call]
    except (ValueError, TypeError) as error:
        raise CredentialProblem(f"{path}: private_key does not sign: {_first_line(error)}") from None
    return account


def load_certificate_and_key(path: Path, key_path: Path | None, password: str | None) -> x509.Certificate:
    """The leaf certificate, once it and its private key load and belong together (`.pem` or `.p12`)."""
    data = _read(path, "certificate file")
    if path.suffix.lower() in (".p12", ".pfx"):
        return _load_pkcs12(path, data, password)
    if key_path is not None:
        _read(key_path, "key file")
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise CredentialProblem(f"{path} holds no PEM certificate: {_first_line(error)}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(path, key_path, password=password)
    except ssl.SSLError as error:
        raise CredentialProblem(
            f"{path}: certificate and key do not load together ({error.reason})"
        ) from None
    return certificate


def _load_pkcs12(path: Path, data: bytes, password: str | None) -> x509.Certificate:
    try:
        key, certificate, _ = pkcs12.load_key_and_certificates(data, password.encode() if password else None)
    except ValueError as error:
        raise CredentialProblem(f"{path}: not a PKCS#12 file or wrong password ({error})") from None
    if key is None or certificate is None:
        raise CredentialProblem(f"{path}: no key and certificate inside")
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise CredentialProblem(f"{path}: the private key does not match the certificate")
    return certificate


def _dated(name: str, certificate: x509.Certificate, now: datetime, renew: str) -> Check:
    subject = certificate.subject.rfc4514_string()
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    days_left = (not_after - now).total_seconds() / 86_400
    if not_after <= now:
        return Check(name, False, f"certificate {subject} expired on {not_after:%Y-%m-%d}", renew)
    if not_before > now:
        return Check(name, False, f"certificate {subject} is not valid before {not_before:%Y-%m-%d}",
                     "check the system clock, or use a certificate that is already valid")  # fmt: skip
    detail = f"certificate {subject} valid until {not_after:%Y-%m-%d} ({int(days_left)} days left)"
    if days_left < EXPIRY_WARNING_DAYS:
        return Check(name, True, detail, renew, warning=True)
    return Check(name, True, detail)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CredentialProblem(f"{what} {path} does not exist") from None
    except OSError as error:
        raise CredentialProblem(f"{what} {path} cannot be read: {error.strerror}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0].split(". See ")[0]
