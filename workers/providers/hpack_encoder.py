"""HPACK header-block encoding tuned for many similar requests on one HTTP/2 connection."""

from __future__ import annotations

from collections import deque
from typing import Any

from hpack import Encoder, HeaderTuple
from hpack.table import HeaderTable


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    encoded = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _literal(data: bytes) -> bytes:
    return _integer(len(data), 7, 0) + data


_STATIC_NAMES = {name: index for index, (name, _) in reversed(list(enumerate(HeaderTable.STATIC_TABLE, 1)))}
_STATIC_PAIRS = {
    pair: _integer(index, 7, 0x80) for index, pair in enumerate(HeaderTable.STATIC_TABLE, 1) if pair[1]
}
_INDEXED = [_integer(index, 7, 0x80) for index in range(128)]
_UNINDEXED_NAMES = frozenset({b":path", b"apns-id", b"content-length"})  # a new value on every request
_DEFAULT_TABLE_SIZE = 4096


class HeaderEncoder(Encoder):
    """HPACK for many similar requests, far cheaper than hpack's: no Huffman coding (pure-Python Huffman costs
    more CPU than its bytes are worth here), memoized representations, one dict lookup per repeated header.

    Repeated values (authorization, apns-topic, …) enter the dynamic table; `:path`, `_UNINDEXED_NAMES`,
    `NeverIndexedHeaderTuple`s and values over a quarter of the table never do, so they do not churn it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._max_size = self._lowest_size = _DEFAULT_TABLE_SIZE
        self._resized = False
        self._size = 0
        self._inserted = 0  # insertions so far: the entry inserted n-th has index 62 + _inserted - 1 - n
        self._entries: deque[tuple[tuple[bytes, bytes], int]] = deque()  # (pair, size), oldest first
        self._known: dict[tuple[bytes, bytes], bytes | int] = dict(_STATIC_PAIRS)  # representation or n
        self._unindexed: dict[tuple[bytes, bool], bytes] = {}  # name part of literals without indexing

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # The peer's SETTINGS_HEADER_TABLE_SIZE bounds our table; we never use more than the default.
        size = min(value, _DEFAULT_TABLE_SIZE)
        if size != self._max_size:
            self._max_size, self._lowest_size = size, min(size, self._lowest_size)
            self._resized = True
            self._evict()

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        parts = self._size_updates() if self._resized else []
        known, indexed = self._known, _INDEXED
        for header in headers:
            found = known.get(header)
            if found is None:
                parts.append(self._encode_new(header))
            elif isinstance(found, bytes):
                parts.append(found)
            else:
                index = 61 + self._inserted - found
                parts.append(indexed[index] if index < 128 else _integer(index, 7, 0x80))
        return b"".join(parts)

    def _encode_new(self, header: tuple[bytes, bytes]) -> bytes:
        name, value = header
        size = len(name) + len(value) + 32
        never = isinstance(header, HeaderTuple) and not header.indexable
        if never or name in _UNINDEXED_NAMES or size > self._max_size // 4:
            prefix = self._unindexed.get((name, never))
            if prefix is None:
                prefix = self._unindexed[name, never] = self._name_part(name, 4, 0x10 if never else 0)
            return prefix + _literal(value)
        self._entries.append(((name, value), size))
        self._known[name, value] = self._inserted
        self._inserted += 1
        self._size += size
        self._evict()
        return self._name_part(name, 6, 0x40) + _literal(value)

    @staticmethod
    def _name_part(name: bytes, prefix_bits: int, flags: int) -> bytes:
        index = _STATIC_NAMES.get(name)
        return _integer(index, prefix_bits, flags) if index else bytes((flags,)) + _literal(name)

    def _evict(self) -> None:
        while self._size > self._max_size:
            pair, size = self._entries.popleft()
            self._size -= size
            if self._known.get(pair) == self._inserted - len(self._entries) - 1:
                del self._known[pair]

    def _size_updates(self) -> list[bytes]:
        sizes = (
            [self._lowest_size, self._max_size] if self._lowest_size < self._max_size else [self._max_size]
        )
        self._resized, self._lowest_size = False, self._max_size
        return [_integer(size, 5, 0x20) for size in sizes]
