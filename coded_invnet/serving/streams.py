"""The one stream responder: answers the requests of a stream concurrently, results in completion order.

Used by the frontend's `ModelStreamInfer` and by the Batch streams of the worker, encoder and decoder.
No gRPC here: the caller turns requests into responses (`answer`) and errors into responses (`refuse`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from coded_invnet.serving.errors import Cancelled, InvalidInput, Overloaded

Request = TypeVar("Request")
Response = TypeVar("Response")


@dataclass(frozen=True)
class Withdrawal:
    """How a stream names its requests, so that a later message can withdraw one in flight."""

    key: Callable[[object], Hashable]
    is_withdrawal: Callable[[object], bool]


class StreamResponder(Generic[Request, Response]):
    """At most `max_pending` requests of one stream in flight; one response per request."""

    def __init__(
        self,
        answer: Callable[[Request], Awaitable[Response]],
        refuse: Callable[[Request, BaseException], Response],
        max_pending: int,
        withdrawal: Withdrawal | None = None,
    ) -> None:
        self._answer = answer
        self._refuse = refuse
        self._max_pending = max_pending
        self._withdrawal = withdrawal

    async def respond(self, requests: AsyncIterator[Request]) -> AsyncIterator[Response]:
        """Responses as they complete. When the consumer stops (the client left), every request still in
        flight is cancelled: its queries are withdrawn."""
        out: asyncio.Queue[Response | None] = asyncio.Queue()
        inflight: dict[Hashable, asyncio.Task[None]] = {}
        serial = 0

        async def one(key: Hashable, request: Request) -> None:
            try:
                response = await self._answer(request)
            except asyncio.CancelledError:
                response = self._refuse(request, Cancelled("the request was withdrawn"))
            except Exception as error:
                response = self._refuse(request, error)
            inflight.pop(key, None)
            out.put_nowait(response)

        async def read() -> None:
            nonlocal serial
            try:
                async for request in requests:
                    if self._withdrawal is None:
                        serial += 1
                        key: Hashable = serial
                    else:
                        key = self._withdrawal.key(request)
                        if self._withdrawal.is_withdrawal(request):
                            if key in inflight:
                                inflight[key].cancel()
                            continue
                        if key in inflight:
                            out.put_nowait(self._refuse(request, InvalidInput(f"{key} is already in flight")))
                            continue
                    if len(inflight) >= self._max_pending:
                        error = Overloaded(f"over {len(inflight)} requests in flight on this stream")
                        out.put_nowait(self._refuse(request, error))
                        continue
                    inflight[key] = asyncio.create_task(one(key, request))
                await asyncio.gather(*inflight.values(), return_exceptions=True)
            finally:
                out.put_nowait(None)  # also when the request stream breaks

        reader = asyncio.create_task(read())
        try:
            while (response := await out.get()) is not None:
                yield response
            await reader  # re-raise a failure of the request stream itself
        finally:
            reader.cancel()
            pending = [reader, *inflight.values()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
