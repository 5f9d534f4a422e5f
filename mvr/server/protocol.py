"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for a request's headers: a connection that
sends nothing, or part of a request line and headers, is closed after ``request_seconds``, as is
one still sending a body the server has answered (uvicorn has no such deadline: a client holding
many half-sent requests would keep their connections open for ever). A body being read has its
own deadline, in the gate (a 408)."""

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
            if self._waiting():
                self._arm()
            else:
                self._disarm()

        def _waiting(self) -> bool:
            """Whether what the client sends now has no other deadline: part of the next request's
            headers (after a response, uvicorn's keep-alive was cancelled by these bytes), or the
            rest of a body answered already (a 401, a 413: the gate reads no more of it)."""
            return self.conn.their_state is h11.IDLE or (self.conn.their_state is h11.SEND_BODY and self.conn.our_state in (h11.DONE, h11.MUST_CLOSE))

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
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

    return Deadline
