"""The APNs provider token: one JWT reused about 50 minutes, never renewed within 20 (providers.md §1.2)."""

from __future__ import annotations

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from workers.providers.apns import ProviderToken


def make_token() -> tuple[ProviderToken, list[float], ec.EllipticCurvePublicKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    clock = [1_800_000_000.0]
    return ProviderToken(pem, "KEY1234567", "TEAM123456", now=lambda: clock[0]), clock, key.public_key()


def test_the_jwt_is_es256_with_kid_iss_iat() -> None:
    token, clock, public = make_token()
    header = token.header()
    assert header.startswith("bearer ")
    encoded = header.removeprefix("bearer ")
    assert jwt.get_unverified_header(encoded) == {"alg": "ES256", "kid": "KEY1234567", "typ": "JWT"}
    claims = jwt.decode(encoded, public, algorithms=["ES256"], options={"verify_iat": False})
    assert claims == {"iss": "TEAM123456", "iat": int(clock[0])}


def test_one_jwt_for_fifty_minutes_then_a_new_one() -> None:
    token, clock, _ = make_token()
    first = token.header()
    clock[0] += 49 * 60
    assert token.header() == first
    clock[0] += 60
    assert token.header() != first
    assert token.minted == 2


def test_expired_by_apple_never_renews_within_twenty_minutes() -> None:
    token, clock, _ = make_token()
    first = token.header()
    clock[0] += 10 * 60
    assert token.expired_by_apple() is False
    assert token.header() == first
    clock[0] += 11 * 60
    assert token.expired_by_apple() is True
    assert token.header() != first
