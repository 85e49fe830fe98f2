"""MongoDB clients with pushgw's write concern, and the embedded SecantusDB server for the default setup."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from pushgw.errors import PushgwError
from pushgw.logs import get_logger
from pushgw.settings import AppSettings, MongoSettings

Document = dict[str, Any]
log = get_logger(__name__)


class EmbeddedMongoError(PushgwError):
    """The embedded SecantusDB server could not be started."""


def create_client(uri: str, timeout_ms: int) -> AsyncMongoClient[Document]:
    """A client whose writes are majority-acknowledged and whose every operation ends within `timeout_ms`."""
    return AsyncMongoClient(
        uri,
        w="majority",
        wTimeoutMS=timeout_ms,
        timeoutMS=timeout_ms,
        serverSelectionTimeoutMS=timeout_ms,
        tz_aware=True,
        appname="pushgw",
    )


def app_database(client: AsyncMongoClient[Document], app: AppSettings) -> AsyncDatabase[Document]:
    return client.get_database(app.mongo_database)


async def ping(client: AsyncMongoClient[Document]) -> bool:
    try:
        await client.admin.command("ping")
    except PyMongoError:
        return False
    return True


class EmbeddedMongo:
    """SecantusDB in a child process, data under `embedded_path`; reused if one already serves the port."""

    def __init__(self, settings: MongoSettings) -> None:
        self._settings = settings
        self._process: asyncio.subprocess.Process | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self._settings.embedded_port}/?directConnection=true"

    async def start(self, ready_timeout_s: float = 20.0) -> None:
        if await self._answers():
            log.info("embedded_mongo_reused", uri=self.uri)
            return
        path = self._settings.embedded_path
        await asyncio.to_thread(Path(path).mkdir, parents=True, exist_ok=True)
        port = str(self._settings.embedded_port)
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", port,
            "--storage-path", str(path), "--log-level", "WARNING", stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = asyncio.get_running_loop().time() + ready_timeout_s
        while not await self._answers():
            if self._process.returncode is not None:
                raise EmbeddedMongoError(f"SecantusDB exited with code {self._process.returncode}")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise EmbeddedMongoError(f"SecantusDB did not answer on {self.uri} within {ready_timeout_s}s")
            await asyncio.sleep(0.1)  # startup poll, not per-push work
        log.info("embedded_mongo_started", uri=self.uri, storage_path=str(path))

    async def _answers(self) -> bool:
        client = create_client(self.uri, 500)
        try:
            return await ping(client)
        finally:
            await client.close()

    async def stop(self) -> None:
        """SIGTERM, then wait: SecantusDB drains its clients before exiting (close ours first)."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
