"""The h2 connection state machine as this client configures it, with the two h2 behaviours it overrides."""

from __future__ import annotations

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame, GoAwayFrame

from workers.providers.hpack_encoder import HeaderEncoder


class ClientH2(H2Connection):
    @property
    def open_outbound_streams(self) -> int:
        # h2 counts open streams by scanning all of them on every send_headers (O(in-flight) per request);
        # Http2Connection enforces the server's limit itself, so h2's check may always pass.
        return 0

    def evict_closed_streams(self) -> None:
        H2Connection.open_outbound_streams.fget(self)  # type: ignore[attr-defined]

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[ev.Event]]:
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == ErrorCodes.NO_ERROR:
            # h2 closes the connection on any GOAWAY; a graceful one still answers streams <= last_stream_id.
            self.state_machine.state = ConnectionState.CLIENT_OPEN
        return frames, events


def new_client_h2() -> ClientH2:
    """A client-side h2 connection: bytes headers passed through unchecked, server push off."""
    h2 = ClientH2(
        H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_outbound_headers=False,
            normalize_inbound_headers=False,
        )
    )
    h2.encoder = HeaderEncoder()
    h2.local_settings = Settings(client=True, initial_values={SettingCodes.ENABLE_PUSH: 0})
    return h2
