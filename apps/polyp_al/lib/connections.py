"""Connection-level guards the HTTP server (uvicorn) lacks: below the requests the Gate checks.

- a connection that sends no whole request head within ``POLYPAL_HEADER_TIMEOUT`` seconds is closed (idle
  sockets took every file descriptor);
- a connection whose client reads nothing of an answer for ``POLYPAL_SEND_TIMEOUT`` seconds, or reads it
  slower than ``POLYPAL_MIN_SEND_RATE`` bytes/s past that, is reset (clients that never read held the
  worker threads);
- asyncio's failed-accept tracebacks (out of file descriptors) are logged once a minute.

``install`` (called by ``security.harden`` in the server process) does all three. The timeouts are a patch
on uvicorn's protocol classes, since uvicorn has no setting for either.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time

logger = logging.getLogger(__name__)

SEND_TIMEOUT = float(os.environ.get("POLYPAL_SEND_TIMEOUT", 60))  # seconds a client may read nothing of an answer
# and one that reads an answer slower than this (bytes/s) for longer than SEND_TIMEOUT (uploads: the same rule)
MIN_SEND_RATE = float(os.environ.get("POLYPAL_MIN_SEND_RATE", 10_000))
HEADER_TIMEOUT = float(os.environ.get("POLYPAL_HEADER_TIMEOUT", 30))  # seconds to send a request's headers


def guard_connections(head_timeout: float, send_timeout: float) -> None:
    """Two timeouts uvicorn lacks, on its HTTP protocol classes:

    - a connection that has not sent a whole request head within ``head_timeout`` seconds of opening (or of
      its last answer) is closed. A socket that sent nothing, or a header byte now and then, stayed open for
      ever, and about 20,000 of them took every file descriptor of the server. (Uvicorn's keep-alive timeout
      starts only after an answer, and any byte received cancels it.) A client still sending the body of a
      request that was answered early (a 413 or 507 before the body) keeps the connection while it sends at
      least 10 kB/s, so that it reads the answer instead of a reset;
    - a connection whose client reads nothing of an answer for ``send_timeout`` seconds (the send buffer full
      all that time), or reads it at under MIN_SEND_RATE on average once its send buffer has been full for
      longer than that, is aborted: its worker thread, socket and buffers are freed. (A graceful close waits
      for the buffer to drain, which a client that never reads never allows; a client reading 2 kB/s held a
      download thread for 100 minutes.)"""
    import importlib

    for mod, cls in (("uvicorn.protocols.http.h11_impl", "H11Protocol"),
                     ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol")):
        try:
            protocol = getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError):  # httptools is not installed: uvicorn uses h11
            continue
        protocol._polypal_timeouts = (head_timeout, send_timeout)
        if getattr(protocol, "_polypal_guarded", False):
            continue
        protocol._polypal_guarded = True
        made, received, completed, lost = (protocol.connection_made, protocol.data_received,
                                           protocol.on_response_complete, protocol.connection_lost)
        pause, resume = protocol.pause_writing, protocol.resume_writing

        def still_sending_body(self) -> bool:
            conn = getattr(self, "conn", None)  # h11
            if conn is None:
                return False
            import h11

            return conn.our_state in (h11.DONE, h11.MUST_CLOSE) and conn.their_state is h11.SEND_BODY

        def head_due(self):
            self._polypal_head_timer = None
            cycle = getattr(self, "cycle", None)
            if cycle is not None and not cycle.response_complete or self.transport.is_closing():
                return  # a request under way: its body and answer have their own timeouts
            got, self._polypal_got = getattr(self, "_polypal_got", 0), 0
            if still_sending_body(self) and got >= 10_000 * type(self)._polypal_timeouts[0]:
                arm_head(self)  # answered early, the body still coming at >= 10 kB/s: let it drain
                return
            self.transport.close()  # no request under way: nothing is lost

        def arm_head(self):
            timer = getattr(self, "_polypal_head_timer", None)
            if timer is not None:
                timer.cancel()
            self._polypal_got = 0
            self._polypal_head_timer = self.loop.call_later(type(self)._polypal_timeouts[0], head_due, self)

        def reset(self):
            """Abort with a reset: the kernel drops what it still holds for the client (a plain close kept
            megabytes per socket queued, delivered at the client's pace)."""
            sock = self.transport.get_extra_info("socket")
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (OSError, AttributeError):
                pass
            self.transport.abort()

        def write_stalled(self):
            self._polypal_write_timer = None
            if not self.transport.is_closing() or self.transport.get_write_buffer_size():
                logger.warning(f"{self.client}: the client read nothing for {type(self)._polypal_timeouts[1]:g} s; "
                               f"connection aborted")
                reset(self)

        def cancel(self, name):
            timer = getattr(self, name, None)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

        def connection_made(self, transport, _made=made):
            _made(self, transport)
            arm_head(self)

        def data_received(self, data, _received=received):
            self._polypal_got = getattr(self, "_polypal_got", 0) + len(data)
            _received(self, data)

        def on_response_complete(self, _completed=completed):
            self._polypal_slow_since = None  # the next answer is timed on its own
            _completed(self)
            if not self.transport.is_closing():
                arm_head(self)

        def connection_lost(self, exc, _lost=lost):
            cancel(self, "_polypal_head_timer")
            cancel(self, "_polypal_write_timer")
            _lost(self, exc)

        def pause_writing(self, _pause=pause):
            _pause(self)
            if getattr(self, "_polypal_slow_since", None) is None:  # the answer's first full send buffer
                self._polypal_slow_since, self._polypal_drained = self.loop.time(), 0
            self._polypal_buffered = self.transport.get_write_buffer_size()
            if getattr(self, "_polypal_write_timer", None) is None:
                self._polypal_write_timer = self.loop.call_later(type(self)._polypal_timeouts[1], write_stalled, self)

        def resume_writing(self, _resume=resume):
            cancel(self, "_polypal_write_timer")
            drained = getattr(self, "_polypal_buffered", 0) - self.transport.get_write_buffer_size()
            self._polypal_drained = getattr(self, "_polypal_drained", 0) + max(0, drained)  # since the pause
            since = getattr(self, "_polypal_slow_since", None)
            elapsed = self.loop.time() - since if since is not None else 0.0
            if elapsed > type(self)._polypal_timeouts[1] and self._polypal_drained < MIN_SEND_RATE * elapsed:
                logger.warning(f"{self.client}: the client read {self._polypal_drained / elapsed / 1000:.1f} kB/s "
                               f"over {elapsed:.0f} s (under {MIN_SEND_RATE / 1000:g} kB/s); connection aborted")
                self.loop.call_soon(reset, self)
            _resume(self)

        (protocol.connection_made, protocol.data_received, protocol.on_response_complete, protocol.connection_lost,
         protocol.pause_writing, protocol.resume_writing) = (connection_made, data_received, on_response_complete,
                                                             connection_lost, pause_writing, resume_writing)


class OncePerMinute(logging.Filter):
    """asyncio logs every failed accept (out of file descriptors) with a traceback, thousands a second:
    one such line a minute is kept, with the count of those dropped."""

    def __init__(self):
        super().__init__()
        self.last, self.dropped = 0.0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "socket.accept() out of system resource" not in str(record.msg):
            return True
        now = time.monotonic()
        if now - self.last < 60:
            self.dropped += 1
            return False
        self.last = now
        if self.dropped:
            record.msg = f"{record.msg} ({self.dropped} more in the last minute, not logged)"
            self.dropped = 0
        return True


def install() -> None:
    """The two timeouts on uvicorn's protocols, and the failed-accept filter on asyncio's logger (once)."""
    guard_connections(HEADER_TIMEOUT, SEND_TIMEOUT)
    if not any(isinstance(f, OncePerMinute) for f in logging.getLogger("asyncio").filters):
        logging.getLogger("asyncio").addFilter(OncePerMinute())
