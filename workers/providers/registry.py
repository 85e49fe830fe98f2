"""build_providers(settings): the provider of each transport this process delivers to."""

from __future__ import annotations

from pymongo import AsyncMongoClient

from pushgw.mongo import Document
from pushgw.settings import Settings
from workers.providers.apns import ApnsProvider
from workers.providers.fcm import FcmProvider
from workers.providers.ppns import PpnsProvider
from workers.providers.provider import APNS, FCM, PPNS, Provider


def build_providers(
    settings: Settings, mongo: AsyncMongoClient[Document], recorder: Provider | None = None
) -> dict[str, Provider]:
    """APNs and FCM for the apps with credentials, PPNS when `[ppns]` is configured; the transports in
    `recording.transports` get `recorder` instead (tests, benchmarks). A transport with no provider fails
    its devices `provider-not-configured`."""
    providers: dict[str, Provider] = {}
    if any(app.apns for app in settings.apps):
        providers[APNS] = ApnsProvider(settings.apps)
    if any(app.fcm for app in settings.apps):
        providers[FCM] = FcmProvider(settings.apps)
    recorded = set(settings.recording.transports) if recorder is not None else set()
    if settings.ppns is not None and PPNS not in recorded:
        providers[PPNS] = PpnsProvider(settings, mongo)
    if recorder is not None:
        for transport in settings.recording.transports:
            providers[transport] = recorder
    return providers
