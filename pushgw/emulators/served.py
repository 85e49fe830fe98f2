"""What both emulators share: an `Http2Server` they answer on, its address, and start/stop."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from pushgw.emulators.http2_server import Http2Server


class ServedEmulator:
    """Base of `ApnsEmulator` and `FcmEmulator`: `start()`/`stop()` or `async with`, then `url`."""

    _server: Http2Server

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()
