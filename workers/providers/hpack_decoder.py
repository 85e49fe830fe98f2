"""HPACK decoding of response headers: hpack's own Decoder with a fast lane for one-byte indexed fields."""

from __future__ import annotations

from typing import Any

from hpack import Decoder, HPACKDecodingError, OversizedHeaderListError
from hpack.table import HeaderTable

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC)


class HeaderDecoder(Decoder):
    """hpack's Decoder, cheaper for what h2 asks of it (`raw=True`: bytes, no UTF-8 decoding).

    A field that is one byte, an index into the static or dynamic table (a response's repeated `:status`,
    `server`, … after the first answer), is looked up inline; every other field (literals, which may insert
    into the dynamic table, table size updates, multi-byte indexes) goes through hpack's own methods in
    block order, so the dynamic table evolves exactly as hpack's. Same results, same errors; header tuples
    from the table are plain tuples instead of `HeaderTuple`s (equal to them; never-indexed literals keep
    their `NeverIndexedHeaderTuple` class).
    """

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            return super().decode(data, raw)
        table = self.header_table
        dynamic = table.dynamic_entries
        limit = self.max_header_list_size
        headers: list[Any] = []
        inflated = 0
        position, end = 0, len(data)
        view: memoryview | None = None
        while position < end:
            byte = data[position]
            if 0x80 < byte < 0xFF:  # indexed, index 1..126: one byte
                index = byte - 0x81
                if index < _STATIC_LENGTH:
                    header = _STATIC[index]
                elif index - _STATIC_LENGTH < len(dynamic):
                    header = dynamic[index - _STATIC_LENGTH]
                else:
                    header = table.get_by_index(index + 1)  # raises InvalidTableIndex, as hpack would
                position += 1
            else:
                if view is None:
                    view = memoryview(data)
                found, consumed = self._decode_field(view[position:], bool(headers))
                position += consumed
                if found is None:
                    continue
                header = found
            headers.append(header)
            inflated += len(header[0]) + len(header[1]) + 32
            if inflated > limit:
                raise OversizedHeaderListError(f"A header list larger than {limit} has been received")
        self._assert_valid_table_size()
        return headers

    def _decode_field(self, rest: memoryview, after_headers: bool) -> tuple[Any, int]:
        """One field as hpack's decode() takes it: (header, or None for a table size update; bytes used)."""
        byte = rest[0]
        if byte & 0x80:
            return self._decode_indexed(rest)
        if byte & 0x40:
            return self._decode_literal_index(rest)
        if byte & 0x20:
            if after_headers:
                raise HPACKDecodingError("Table size update not at the start of the block")
            return None, self._update_encoding_context(rest)
        return self._decode_literal_no_index(rest)
