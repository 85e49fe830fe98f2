"""The one table of provider answers: every APNs reason and FCM error code → what pushgw does about it.

providers.md §1.4, §2.4 and §3. A verdict is a value; the providers turn it into an Outcome, the token
cleanup reads `DEAD_TOKEN`, and a `CREDENTIAL` verdict pauses the credential instead of failing every
device at full speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    SENT = "sent"
    FAILED = "failed"  # permanent for this device and push: counted failed, reason kept
    DEAD_TOKEN = "dead-token"  # failed, and the token is authoritative-dead (cleanup candidate)
    SUSPECT_TOKEN = "suspect-token"  # failed; dead only if the environment is unambiguous
    TRANSIENT = "transient"  # retried through the delay queue
    REFRESH = "refresh"  # our auth token is stale: refresh it and retry at once (once)
    CREDENTIAL = "credential"  # the credential is broken: pause it and alert; devices retried later


@dataclass(frozen=True, slots=True)
class Rejection:
    verdict: Verdict
    reason: str
    retry_after_s: float | None = None
    dead_since_ms: float | None = None  # APNs 410 `timestamp`: when the token stopped being valid


_APNS_BY_REASON: dict[str, Verdict] = {
    "BadDeviceToken": Verdict.SUSPECT_TOKEN,
    "DeviceTokenNotForTopic": Verdict.FAILED,
    "Unregistered": Verdict.DEAD_TOKEN,
    "ExpiredToken": Verdict.DEAD_TOKEN,
    "IdleTimeout": Verdict.TRANSIENT,
    "ExpiredProviderToken": Verdict.REFRESH,
    "TooManyProviderTokenUpdates": Verdict.TRANSIENT,
    "TooManyRequests": Verdict.TRANSIENT,
    "InternalServerError": Verdict.TRANSIENT,
    "ServiceUnavailable": Verdict.TRANSIENT,
    "Shutdown": Verdict.TRANSIENT,
    "BadCertificate": Verdict.CREDENTIAL,
    "BadCertificateEnvironment": Verdict.CREDENTIAL,
    "Forbidden": Verdict.CREDENTIAL,
    "InvalidProviderToken": Verdict.CREDENTIAL,
    "MissingProviderToken": Verdict.CREDENTIAL,
}


def classify_apns(
    status: int, reason: str | None, retry_after_s: float | None = None, timestamp_ms: float | None = None
) -> Rejection:
    """An APNs answer. Unknown 4xx reasons are permanent; unknown 5xx are transient."""
    if status == 200:
        return Rejection(Verdict.SENT, "")
    name = reason or f"HTTP{status}"
    verdict = _APNS_BY_REASON.get(name)
    if verdict is None:
        verdict = Verdict.TRANSIENT if status >= 500 or status == 429 else Verdict.FAILED
        if status == 403:
            verdict = Verdict.CREDENTIAL
    return Rejection(
        verdict,
        name,
        retry_after_s if verdict is Verdict.TRANSIENT else None,
        timestamp_ms if verdict is Verdict.DEAD_TOKEN else None,
    )


# FCM: google.rpc.Status code + FcmError.errorCode (providers.md §2.4).
_INVALID_TOKEN_MESSAGE = "not a valid fcm registration token"
_FCM_BY_CODE: dict[str, Verdict] = {
    "UNREGISTERED": Verdict.DEAD_TOKEN,
    "SENDER_ID_MISMATCH": Verdict.DEAD_TOKEN,
    "QUOTA_EXCEEDED": Verdict.TRANSIENT,
    "UNAVAILABLE": Verdict.TRANSIENT,
    "INTERNAL": Verdict.TRANSIENT,
    "THIRD_PARTY_AUTH_ERROR": Verdict.CREDENTIAL,
    "UNSPECIFIED_ERROR": Verdict.FAILED,
}
QUOTA_EXCEEDED_MIN_S = 60.0


def classify_fcm(
    status: int, error_code: str | None, message: str = "", retry_after_s: float | None = None
) -> Rejection:
    """An FCM v1 answer; `error_code` is the FcmError detail (or the rpc status when there is none)."""
    if status == 200:
        return Rejection(Verdict.SENT, "")
    code = error_code or f"HTTP{status}"
    if code == "INVALID_ARGUMENT" and _INVALID_TOKEN_MESSAGE in message.lower():
        return Rejection(Verdict.DEAD_TOKEN, code)
    verdict = _FCM_BY_CODE.get(code)
    if verdict is None:
        if status == 401:
            verdict = Verdict.REFRESH
        elif status == 403:
            verdict = Verdict.CREDENTIAL
        elif status >= 500 or status == 429:
            verdict = Verdict.TRANSIENT
        else:
            verdict = Verdict.FAILED
    if code == "QUOTA_EXCEEDED":
        retry_after_s = max(retry_after_s or 0.0, QUOTA_EXCEEDED_MIN_S)
    return Rejection(verdict, code, retry_after_s if verdict is Verdict.TRANSIENT else None)


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (the HTTP-date form is not used by APNs or FCM)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None
