"""Throwaway credentials for the emulators (CA, certificates, signing keys) and the checks made with them."""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import shutil
import ssl
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)
PROVIDER_TOKEN_LIFETIME_S = 3600
ASSERTION_LIFETIME_S = 3600
_SHORT_LIVED = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
CLOCK_SKEW_S = 60
_APNS_JWT_OPTIONS: Any = {
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "require": ["iss", "iat"],
}


@dataclass(frozen=True, slots=True)
class ServerCertificates:
    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_key_file: Path


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    cert_file: Path
    key_file: Path


def write_server_certificates(directory: Path) -> ServerCertificates:
    """Write `ca.pem`, `server.pem`, `server-key.pem` (for 127.0.0.1, ::1 and localhost) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pushgw emulator CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    server_cert = (
        _leaf_builder(ca_cert, _name("localhost"), server_key.public_key())
        .add_extension(alt_names, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certificates = ServerCertificates(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server-key.pem",
        ca_key_file=directory / "ca-key.pem",
    )
    _write_certificate(certificates.ca_file, ca_cert)
    _write_private_key(certificates.ca_key_file, ca_key)
    _write_certificate(certificates.cert_file, server_cert)
    _write_private_key(certificates.key_file, server_key)
    return certificates


def write_client_certificate(
    certificates: ServerCertificates, directory: Path, common_name: str = "pushgw emulator client"
) -> ClientCertificate:
    """Write `client.pem` and `client-key.pem` signed by the emulator CA (APNs certificate auth)."""
    ca_cert = x509.load_pem_x509_certificate(certificates.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(certificates.ca_key_file.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{certificates.ca_key_file} is not an EC private key")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        _leaf_builder(ca_cert, _name(common_name), client_key.public_key())
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    client = ClientCertificate(cert_file=directory / "client.pem", key_file=directory / "client-key.pem")
    _write_certificate(client.cert_file, client_cert)
    _write_private_key(client.key_file, client_key)
    return client


def write_apns_key(path: Path) -> Path:
    """Write a fresh ES256 signing key as PKCS8 PEM, the format of Apple's `AuthKey_<key id>.p8` files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private_key(path, ec.generate_private_key(ec.SECP256R1()))
    return path


def server_ssl_context(
    certificates: ServerCertificates, alpn_protocols: list[str], client_ca_file: Path | None = None
) -> ssl.SSLContext:
    """TLS 1.2+ server context; with `client_ca_file` a client certificate signed by that CA is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.load_cert_chain(certificates.cert_file, certificates.key_file)
    context.set_alpn_protocols(alpn_protocols)
    if client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca_file)
    return context


def client_ssl_context(ca_file: Path, client: ClientCertificate | None = None) -> ssl.SSLContext:
    """A client context trusting the emulator CA, offering h2, optionally presenting a client certificate."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _leaf_builder(
    ca_cert: x509.Certificate, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        _builder(subject, ca_cert.subject, public_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False
        )
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def prepare_directory(directory: Path | None, owner: object) -> Path:
    """`directory`, created if missing; None gives a temp dir removed when `owner` is collected or at exit."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    temporary = Path(tempfile.mkdtemp(prefix="pushgw-emulator-"))
    weakref.finalize(owner, shutil.rmtree, temporary, ignore_errors=True)
    return temporary


@dataclass(frozen=True, slots=True)
class TokenKey:
    """An APNs provider-token signing key as Apple knows it: key id, team id and the public half."""

    key_id: str
    team_id: str
    public_key: ec.EllipticCurvePublicKey

    @classmethod
    def from_pem(cls, pem: bytes, key_id: str, team_id: str) -> TokenKey:
        """From a `.p8` private key or an EC public key, PEM."""
        key: object
        if b"PRIVATE KEY" in pem:
            key = serialization.load_pem_private_key(pem, password=None)
            key = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
        else:
            key = serialization.load_pem_public_key(pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("APNs token keys are EC P-256 keys")
        return cls(key_id, team_id, key)

    @classmethod
    def from_file(cls, path: Path, key_id: str, team_id: str) -> TokenKey:
        return cls.from_pem(path.read_bytes(), key_id, team_id)


class ProviderTokenVerifier:
    """Checks APNs `authorization: bearer <jwt>`; each distinct JWT's signature is verified once."""

    def __init__(self, keys: Iterable[TokenKey]) -> None:
        self.keys = {key.key_id: key for key in keys}
        self.teams_by_token: dict[str, str] = {}
        self._checked: dict[str, tuple[str, int] | str] = {}

    def reject_reason(self, authorization: str | None) -> str | None:
        """None when the header carries a valid, unexpired provider token; else the APNs reason."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return "MissingProviderToken"
        token = authorization[7:].strip()
        checked = self._checked.get(token)
        if checked is None:
            if len(self._checked) > 10_000:
                self._checked.clear()
            checked = self._checked[token] = self._verify(token)
        if isinstance(checked, str):
            return checked
        age_s = time.time() - checked[1]
        if age_s > PROVIDER_TOKEN_LIFETIME_S:
            return "ExpiredProviderToken"
        return "InvalidProviderToken" if age_s < -CLOCK_SKEW_S else None

    def _verify(self, token: str) -> tuple[str, int] | str:
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.get(header.get("kid", ""))
            if key is None or header.get("alg") != "ES256":
                return "InvalidProviderToken"
            claims = jwt.decode(token, key.public_key, algorithms=["ES256"], options=_APNS_JWT_OPTIONS)
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        if claims["iss"] != key.team_id or not isinstance(claims["iat"], int):
            return "InvalidProviderToken"
        self.teams_by_token[token] = key.team_id
        return key.team_id, claims["iat"]


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The parts of a service-account key file the emulator needs."""

    path: Path
    client_email: str
    project_id: str
    public_key: rsa.RSAPublicKey

    @classmethod
    def from_file(cls, path: Path) -> ServiceAccount:
        document = json.loads(path.read_text())
        key = serialization.load_pem_private_key(document["private_key"].encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path}: service-account keys are RSA keys")
        return cls(path, document["client_email"], document["project_id"], key.public_key())


def write_service_account(
    path: Path, *, token_uri: str, project_id: str, client_email: str | None = None
) -> ServiceAccount:
    """Write a service-account JSON key file (fresh RSA 2048 key) whose `token_uri` points at an emulator."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    email = client_email or f"pushgw-emulator@{project_id}.iam.gserviceaccount.com"
    document = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem.decode(),
        "client_email": email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    path.chmod(0o600)
    return ServiceAccount(path, email, project_id, key.public_key())


def check_oauth_assertion(
    assertion: str, accounts: Mapping[str, ServiceAccount], audiences: list[str], scope: str
) -> tuple[str, str] | None:
    """None when a JWT-bearer assertion passes Google's checks; else (error, error_description)."""
    try:
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
        account = accounts.get(issuer) if isinstance(issuer, str) else None
        if account is None:
            return "invalid_grant", "Invalid grant: account not found"
        claims = jwt.decode(
            assertion,
            account.public_key,
            algorithms=["RS256"],
            audience=audiences,
            options={"require": ["iss", "aud", "iat", "exp"]},
            leeway=CLOCK_SKEW_S,
        )
    except jwt.InvalidAudienceError:
        return "invalid_grant", "Invalid JWT: Failed audience check."
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        return "invalid_grant", _SHORT_LIVED
    except jwt.PyJWTError:
        return "invalid_grant", "Invalid JWT Signature."
    if claims["exp"] > claims["iat"] + ASSERTION_LIFETIME_S:
        return "invalid_grant", _SHORT_LIVED
    if scope not in str(claims.get("scope", "")).split():
        return "invalid_scope", f"The scope {scope} is required."
    return None
