"""Many concurrent Batch → BatchResult calls multiplexed over one long-lived bidirectional stream.

The frontend talks to each backend (data worker, parity worker, encoder, decoder) through one
`BatchStream`: a call puts its batch on the stream and awaits the result with the same
(group_id, index). On the wire, group_id is a number unique on the stream (the caller's group id does
not travel), so that a batch withdrawn and sent again at once can never take the late result of its
first copy. A stream carries no gRPC deadline (it lives for many calls), so each call has its
own: past it, or when the caller is cancelled (a straggler withdrawn), a `cancel` message withdraws the
batch at the server. When the stream breaks (the backend died or restarted), every call waiting on it
fails with `Unavailable` and the next call opens a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable

import grpc

from coded_invnet.proto import coded_pb2
from coded_invnet.serving.errors import Unavailable

BatchKey = tuple[int, int]  # (group_id, index): a batch's name on a stream
OpenStream = Callable[[AsyncIterator[coded_pb2.Batch]], grpc.aio.StreamStreamCall]


class _Stream:
    """One open stream: an outbox feeding the request side, a reader resolving futures by key."""

    def __init__(self, open_stream: OpenStream, who: str) -> None:
        self.who = who
        self.outbox: asyncio.Queue[coded_pb2.Batch | None] = asyncio.Queue()
        self.pending: dict[BatchKey, asyncio.Future[coded_pb2.BatchResult]] = {}
        self.broken = False
        self.call = open_stream(self._requests())
        self.reader = asyncio.create_task(self._read(), name=f"stream-reader {who}")

    async def _requests(self) -> AsyncIterator[coded_pb2.Batch]:
        while (batch := await self.outbox.get()) is not None:
            yield batch

    async def _read(self) -> None:
        error = Unavailable(f"{self.who}: the stream ended")
        try:
            async for result in self.call:
                future = self.pending.pop((result.group_id, result.index), None)
                if future is not None and not future.done():
                    future.set_result(result)
        except grpc.aio.AioRpcError as exc:
            error = Unavailable(f"{self.who}: {exc.code().name} {exc.details()}")
        except asyncio.CancelledError:
            error = Unavailable(f"{self.who}: the stream was closed")
        finally:
            self.broken = True
            self.outbox.put_nowait(None)  # ends the request generator, and with it gRPC's task feeding it
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(error)
            self.pending.clear()

    def close(self) -> None:
        self.broken = True
        self.call.cancel()
        self.reader.cancel()


class BatchStream:
    """Calls to one backend over one bidirectional stream, reopened when it breaks."""

    def __init__(self, open_stream: OpenStream, who: str) -> None:
        self._open_stream = open_stream
        self.who = who
        self._stream: _Stream | None = None
        self._wire_ids = itertools.count(1)

    def _live(self) -> _Stream:
        if self._stream is None or self._stream.broken:
            self._stream = _Stream(self._open_stream, self.who)
        return self._stream

    async def call(self, batch: coded_pb2.Batch, timeout_s: float) -> coded_pb2.BatchResult:
        """Send ``batch`` and return its result; raise Unavailable on a stream failure or past
        ``timeout_s``. Cancelling the caller withdraws the batch at the server too."""
        stream = self._live()
        wire = coded_pb2.Batch(
            group_id=next(self._wire_ids), index=batch.index, tensors=batch.tensors, parity=batch.parity
        )
        key = (wire.group_id, wire.index)
        future: asyncio.Future[coded_pb2.BatchResult] = asyncio.get_running_loop().create_future()
        stream.pending[key] = future
        stream.outbox.put_nowait(wire)
        try:
            result = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise Unavailable(f"{self.who}: no result within {timeout_s:g} s") from None
        finally:
            if stream.pending.get(key) is future:  # timed out or cancelled: withdraw it
                del stream.pending[key]
                if not stream.broken:
                    stream.outbox.put_nowait(
                        coded_pb2.Batch(group_id=wire.group_id, index=wire.index, cancel=True)
                    )
        result.group_id = batch.group_id
        return result

    async def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.reader
