"""The connections one pushgw process shares: MongoDB (embedded SecantusDB by default) and the broker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pymongo import AsyncMongoClient

from pushgw.broker import Broker, RabbitBroker
from pushgw.memory_broker import MemoryBroker
from pushgw.mongo import Document, EmbeddedMongo, create_client
from pushgw.settings import QueueSettings, Settings
from pushgw.tracing import configure_tracing


def create_broker(settings: QueueSettings, delay_tiers_s: Sequence[int] = (5,)) -> Broker:
    if settings.is_memory:
        return MemoryBroker()
    return RabbitBroker(settings, delay_tiers_s)


@dataclass(slots=True)
class Connections:
    mongo: AsyncMongoClient[Document]
    broker: Broker
    embedded: EmbeddedMongo | None = None

    @classmethod
    async def open(cls, settings: Settings, broker: Broker | None = None) -> Connections:
        """Start the embedded database if `mongo.uri` is unset, then connect; the broker may come up later.

        Also installs the trace exporter when `[tracing]` is enabled (once per process)."""
        configure_tracing(settings.tracing)
        embedded = None
        uri = settings.mongo.uri
        if uri is None:
            embedded = EmbeddedMongo(settings.mongo)
            await embedded.start()
            uri = embedded.uri
        broker = broker or create_broker(settings.queue, settings.worker.delay_tiers_s)
        connections = cls(create_client(uri, settings.mongo.timeout_ms), broker, embedded)
        await connections.broker.start()
        return connections

    async def close(self) -> None:
        await self.broker.close()
        await self.mongo.close()
        if self.embedded is not None:
            await self.embedded.stop()
