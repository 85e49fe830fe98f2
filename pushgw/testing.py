"""pytest plugin with `apns_emulator` and `fcm_emulator` fixtures: `pytest_plugins = ["pushgw.testing"]`.

Only pytest imports this module (pytest is a dev dependency). Each fixture starts a fresh emulator in a
background thread with its certificates in a temp dir, yields it, and stops it after the test. Options go
through a marker, `@pytest.mark.apns_emulator(apple_throttle=True)`, or indirect parametrization.
The APNs emulator defaults to token auth: sign JWTs with `token_key_file`, `key_id` and `team_id`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pushgw.emulators import ApnsEmulator, FcmEmulator, run_in_thread


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "apns_emulator(**options): options of the apns_emulator fixture")
    config.addinivalue_line("markers", "fcm_emulator(**options): options of the fcm_emulator fixture")


@pytest.fixture
def apns_emulator(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApnsEmulator]:
    """A running ApnsEmulator (token auth unless the options say otherwise)."""
    options = {"auth": "token", **_options(request, "apns_emulator")}
    emulator = ApnsEmulator(directory=tmp_path_factory.mktemp("apns-emulator"), **options)
    thread = run_in_thread(emulator)
    try:
        yield emulator
    finally:
        thread.stop()


@pytest.fixture
def fcm_emulator(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FcmEmulator]:
    """A running FcmEmulator; its `service_account_file` points google-auth at the emulator's /token."""
    emulator = FcmEmulator(
        directory=tmp_path_factory.mktemp("fcm-emulator"), **_options(request, "fcm_emulator")
    )
    thread = run_in_thread(emulator)
    try:
        yield emulator
    finally:
        thread.stop()


def _options(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    options = dict(marker.kwargs) if marker is not None else {}
    options.update(getattr(request, "param", None) or {})
    return options
