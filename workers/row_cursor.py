"""The audience cursor: `find_raw_batches`' cursor without pymongo's second decoding of every batch.

pymongo 4.20 reads a raw batch reply in `_OpMsg.raw_response` by wrapping it in a `RawBSONDocument` with the
default codec and walking it with `_decode_selective`: iterating the `cursor` sub-document inflates its
`firstBatch`/`nextBatch` array into one `RawBSONDocument` per row — objects it then throws away, because the
array is decoded again as one raw array and joined into the batch's bytes. On a fan-out that was ~1.2 µs of
the planner's CPU per installation, more than everything the planner does itself (docs/benchmarks.md), and
it sits between a reply's arrival and the next `getMore`.

`RowBatchCursor` unpacks an `OP_MSG` reply the same way, with the raw-array codec from the start, so nothing
is decoded per row: the same bytes, in the same batches, through the same cursor (retries, sessions,
`killCursors`, timeouts stay pymongo's). It relies on private names of pymongo 4.x (`_unpack_response`,
`_OpMsg`, `bson._decode_selective`, `_RAW_ARRAY_BSON_OPTIONS`); tests/integration/test_row_cursor.py
compares it with `find_raw_batches` byte for byte, so an upgrade that changes them fails there first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from bson import _convert_raw_document_lists_to_streams, _decode_selective
from bson.codec_options import CodecOptions
from bson.raw_bson import _RAW_ARRAY_BSON_OPTIONS, RawBSONDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncRawBatchCursor
from pymongo.message import _OpMsg

from pushgw.mongo import Document


class RowBatchCursor(AsyncRawBatchCursor[Document]):
    """Iterates raw batches (each the batch's rows as BSON, back to back), as `find_raw_batches` does."""

    def _unpack_response(
        self,
        response: Any,
        cursor_id: int | None,
        codec_options: CodecOptions[Mapping[str, Any]],
        user_fields: Mapping[str, Any] | None = None,
        legacy_response: bool = False,
    ) -> list[Any]:
        if legacy_response or not isinstance(response, _OpMsg):
            return super()._unpack_response(response, cursor_id, codec_options, user_fields, legacy_response)
        reply = RawBSONDocument(response.payload_document, cast(Any, _RAW_ARRAY_BSON_OPTIONS))
        document = _decode_selective(reply, user_fields, _RAW_ARRAY_BSON_OPTIONS)
        _convert_raw_document_lists_to_streams(document)
        return [document]


def row_batches(
    collection: AsyncCollection[Document],
    mongo_filter: Mapping[str, Any],
    projection: Mapping[str, Any],
    *,
    batch_size: int,
    hint_id: bool,
) -> RowBatchCursor:
    """One cursor over the matching rows sorted on `_id` (hinted to the `_id` index when `hint_id`)."""
    cursor = RowBatchCursor(collection, mongo_filter, projection, batch_size=batch_size).sort("_id", 1)
    return cursor.hint("_id_") if hint_id else cursor
