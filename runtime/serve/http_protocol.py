"""uvicorn's HTTP/1.1 protocol (httptools) with a deadline on receiving each request, and a 503 with Retry-After
when the server holds more connections than ``--limit-concurrency``.

uvicorn closes only idle keep-alive connections, and only after a response: a client that connects and sends half a
header, or stalls in the middle of a body, holds its connection (and its buffers) for ever. Here every request must
arrive whole — headers and body — within ``request_timeout_s`` of its first byte (of the connection, for the first
request); otherwise the connection is answered 408 and closed. Time the application spends on a request is not
counted: the deadline ends with the request's last byte.

Pass the class that ``request_deadline_protocol`` returns as ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger(__name__)


class RequestDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a per-request read deadline and a concurrency limit whose 503 carries Retry-After.

    Class attributes (set by ``request_deadline_protocol``): ``request_timeout_s``, ``retry_after_s``. The limit is
    uvicorn's ``Config.limit_concurrency``: more open connections than it, or as many requests in progress, and a new
    request is answered 503 (uvicorn's own check answers without Retry-After; it is replaced here).
    """

    request_timeout_s: float = 30.0
    retry_after_s: int = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._connection_limit = self.limit_concurrency
        self.limit_concurrency = None  # uvicorn's check answers without Retry-After; on_headers_complete checks
        self._request_deadline: asyncio.TimerHandle | None = None

    # --- the request deadline ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # From the connection on: a client that connects and sends nothing is held no longer than one that sends
        # half a header.
        self._arm_request_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_request_deadline()

    def on_message_complete(self) -> None:
        self._cancel_request_deadline()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_deadline()
        super().connection_lost(exc)

    def _arm_request_deadline(self) -> None:
        if self._request_deadline is None:
            self._request_deadline = self.loop.call_later(self.request_timeout_s, self._request_timed_out)

    def _cancel_request_deadline(self) -> None:
        if self._request_deadline is not None:
            self._request_deadline.cancel()
            self._request_deadline = None

    def _request_timed_out(self) -> None:
        self._request_deadline = None
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]} " if self.client else ""
        logger.info("%sclosed: no complete request within --request-timeout=%gs", client, self.request_timeout_s)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application holds this request (waiting for its body, or a pipelined one behind it timed out):
            # a pending receive sees a disconnect, and what it sends from now on goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:  # half an answer is out: a 408 cannot follow it
                self.transport.close()
                return
        elif cycle is not None and cycle.more_body:  # answered (e.g. 413) before its body ended
            self.transport.close()
            return
        message = f"request (headers and body) not received within --request-timeout={self.request_timeout_s:g}s"
        self._send_and_close(408, message)

    # --- the concurrency limit ---

    def on_headers_complete(self) -> None:
        limit = self._connection_limit
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            logger.warning("over --limit-concurrency=%d: answered 503", limit)
            self.app = self._service_unavailable
        else:
            self.app = self.config.loaded_app
        super().on_headers_complete()

    async def _service_unavailable(self, scope, receive, send) -> None:
        body = f"server busy: more than --limit-concurrency={self._connection_limit} connections; retry later".encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(self.retry_after_s).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def _send_and_close(self, status: int, message: str) -> None:
        body = message.encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(body)).encode() + b"\r\n",
                        b"connection: close\r\n", b"\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()


def request_deadline_protocol(request_timeout_s: float = 30.0, retry_after_s: int = 1) -> type[RequestDeadlineProtocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``: requests must arrive whole within
    ``request_timeout_s`` seconds; 503 answers over ``Config.limit_concurrency`` say ``Retry-After: retry_after_s``."""
    if request_timeout_s <= 0:
        raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s}")
    if retry_after_s < 1:
        raise ValueError(f"retry_after_s must be >= 1, got {retry_after_s}")
    return type("RequestDeadlineProtocol", (RequestDeadlineProtocol,),
                {"request_timeout_s": float(request_timeout_s), "retry_after_s": int(retry_after_s)})
