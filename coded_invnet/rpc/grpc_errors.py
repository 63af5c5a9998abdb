"""The one place where domain errors become gRPC status codes: a grpc.aio server interceptor for
RPC-level errors, and `batch_status` for per-batch errors reported inside a stream."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from coded_invnet.proto import coded_pb2
from coded_invnet.serving.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    ServingError,
    Unavailable,
)

log = logging.getLogger(__name__)
INTERNAL_MESSAGE = "internal error (details in the server log)"


STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
}


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for an error; anything not in the table is INTERNAL and logged."""
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind], str(error)
    log.error("internal error", exc_info=error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def batch_status(error: BaseException) -> coded_pb2.Status:
    code, message = status_of(error)
    return coded_pb2.Status(code=code.value[0], message=message)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns a ServingError raised by a handler into its status code; other exceptions into INTERNAL."""

    def __init__(self) -> None:
        # by method name: a method's handler never changes, so it is wrapped once, not on every call
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler  # an unknown method: not remembered, callers choose the names
            wrapped = self._wrapped[method] = self._wrap(handler, method)
        return wrapped

    @staticmethod
    def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        # garbage bytes become INVALID_ARGUMENT (grpc would answer UNKNOWN) via a tolerant deserializer
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary), parse, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, streamed=True), parse, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream), parse, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, streamed=True), parse, handler.response_serializer
        )


class _Undecodable:
    """Stands for a request message that failed to parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Undecodable(error)

    return parse


def _checked(request: Any, streamed: bool) -> Any:
    """The request, or (streamed) an iterator over them, raising InvalidInput for an undecodable one."""

    def check(message: Any) -> Any:
        if isinstance(message, _Undecodable):
            raise InvalidInput(f"the request is not a valid protobuf message: {message.error}")
        return message

    async def each(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for message in requests:
            yield check(message)

    return each(request) if streamed else check(request)


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    code, message = status_of(error)
    await context.abort(code, message)


def _wrap_unary(behaviour: Any, streamed: bool = False) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(_checked(request, streamed), context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error)

    return wrapped


def _wrap_stream(behaviour: Any, streamed: bool = False) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behaviour):
        return _wrap_unary(behaviour, streamed)  # it writes its responses through its context

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(_checked(request, streamed), context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error)

    return wrapped
