"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for a request's headers: a connection that
sends nothing, or part of a request line and headers, is closed after ``request_seconds``
(uvicorn has no such deadline: a client holding many half-sent requests would keep their
connections open for ever). The body has its own deadline, in the gate (a 408)."""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def deadline_protocol(seconds: float) -> type:
    """An :class:`H11Protocol` whose connections close when a request's headers have not all
    arrived ``seconds`` after the connection opened or its first bytes came."""

    class Deadline(H11Protocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # part of the next request's headers (after a response: uvicorn's keep-alive was cancelled)
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:  # not moved by each byte: a client that trickles them gets no more time
                self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return Deadline
