"""installation → the live connection this node holds for it; a newer connection replaces an older one."""

from __future__ import annotations

from typing import Protocol

from ppns.backlog import StoredPush
from pushgw import metrics

InstallationKey = tuple[str, str]  # (app id, installation id)


class LiveConnection(Protocol):
    key: InstallationKey
    holder: str  # `<node id>/<connection id>`, recorded as the installation's newest connection
    claimed: bool  # the holder is recorded in the backlog (the sweep compares only claimed connections)

    def reset(self) -> None:
        """Close abortively (RST)."""
        ...

    def deliver(self, push: StoredPush) -> None:
        """A push from the node queue."""
        ...

    def cursor(self) -> str | None:
        """The `time` of the newest push written (or skipped) on this connection."""
        ...


class Registry:
    """This node's live connections by installation (single node: the whole presence)."""

    def __init__(self) -> None:
        self._live: dict[InstallationKey, LiveConnection] = {}

    def claim(self, connection: LiveConnection) -> None:
        """Make `connection` the installation's connection; the one it replaces is reset (newest wins)."""
        previous = self._live.get(connection.key)
        self._live[connection.key] = connection
        if previous is not None and previous is not connection:
            metrics.PPNS_RESETS.labels("replaced").inc()
            previous.reset()

    def release(self, connection: LiveConnection) -> None:
        if self._live.get(connection.key) is connection:
            del self._live[connection.key]

    def holds(self, connection: LiveConnection) -> bool:
        return self._live.get(connection.key) is connection

    def get(self, key: InstallationKey) -> LiveConnection | None:
        return self._live.get(key)

    def by_app(self) -> dict[str, list[LiveConnection]]:
        """The claimed connections by app."""
        grouped: dict[str, list[LiveConnection]] = {}
        for (app_id, _), connection in self._live.items():
            if connection.claimed:
                grouped.setdefault(app_id, []).append(connection)
        return grouped

    def __len__(self) -> int:
        return len(self._live)
