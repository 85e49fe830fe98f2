"""`pushgw dev` without provider credentials: APNs and FCM go to the emulators, and the banner says so."""

from __future__ import annotations

from pathlib import Path

from pushgw.emulators.apns import ApnsEmulator
from pushgw.emulators.fcm import FcmEmulator
from pushgw.settings import ApnsSettings, AppSettings, FcmSettings, Settings

DEV_BUNDLE_ID = "com.example.pushgw-dev"  # the topic of installations without an appIdentifier


class DevSandbox:
    """Starts an emulator for each transport no app has credentials for (and no recorder takes), and
    points every app without credentials at it. A sandbox: nothing reaches a real device."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self._original = settings
        self.settings = settings
        recorded = set(settings.recording.transports)
        wants_apns = "apns" not in recorded and not any(app.apns for app in settings.apps)
        wants_fcm = "fcm" not in recorded and not any(app.fcm for app in settings.apps)
        self.apns = ApnsEmulator(directory=directory / "apns", auth="token") if wants_apns else None
        self.fcm = FcmEmulator(directory=directory / "fcm") if wants_fcm else None

    async def start(self) -> None:
        if self.apns is not None:
            await self.apns.start()
        if self.fcm is not None:
            await self.fcm.start()
        apps = [self._sandboxed(app) for app in self._original.apps]
        self.settings = self._original.model_copy(update={"apps": apps})

    def _sandboxed(self, app: AppSettings) -> AppSettings:
        update: dict[str, object] = {}
        apns, fcm = self.apns, self.fcm
        if apns is not None and apns.token_key_file is not None:
            credential = ApnsSettings(
                bundle_ids=[DEV_BUNDLE_ID], default=True, environment="sandbox", url=apns.url,
                ca_file=apns.ca_file, key_file=apns.token_key_file, key_id=apns.key_id, team_id=apns.team_id,
            )  # fmt: skip
            update["apns"] = [credential]
        if fcm is not None:
            update["fcm"] = FcmSettings(
                service_account_file=fcm.service_account_file, url=fcm.url, ca_file=fcm.ca_file
            )
        return app.model_copy(update=update)

    def banner_lines(self) -> list[str]:
        lines = [
            f"  {name}:    EMULATOR at {emulator.url} (stats: {emulator.url}/emulator/stats)"
            for name, emulator in (("apns", self.apns), ("fcm", self.fcm))
            if emulator is not None
        ]
        if lines:
            lines += [
                "  No provider credentials configured: a sandbox, nothing reaches a real device.",
                "  Add [[apps.apns]] / [apps.fcm] (docs/configuration.md) to deliver.",
            ]
        return lines

    async def stop(self) -> None:
        for emulator in (self.apns, self.fcm):
            if emulator is not None:
                await emulator.stop()
