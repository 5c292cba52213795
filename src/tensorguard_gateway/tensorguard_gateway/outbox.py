"""Delivery across a link that can be cut (ROS-free): the site gateway's outbox and the server gateway's
memory of what it delivered.

Zenoh drops a put no subscriber is reachable for, and acknowledges nothing end to end: puts queued in a
session that dies with a cut link, or that reach the router while the server gateway's own session is
being re-established, are lost. So the site gateway holds messages for the server in an `Outbox` while no
server gateway is subscribed, keeps each one it sent until the server gateway acknowledges it (the
payload's SHA-256 on the site's ``delivered`` key), and sends it again when the link comes back or no
acknowledgement came within a few seconds; the server gateway drops the copies that had arrived
(`RecentDigests`) and acknowledges them again.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


def digest(payload: bytes) -> bytes:
    """SHA-256 of a payload: how the server gateway acknowledges a delivered record."""
    return hashlib.sha256(payload).digest()


class Outbox:
    """Messages (key, payload) waiting to be put, in order, at most `limit`; and the ones put but not yet
    acknowledged (at most `limit`, for at most `window_s` seconds), sent again by `resend` /
    `resend_unacknowledged` until the server gateway acknowledges them."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._waiting: deque[tuple[str, bytes]] = deque()
        self._sent: OrderedDict[bytes, tuple[float, str, bytes]] = OrderedDict()
        self.expired = 0  # given up on: never acknowledged within the window

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def unacknowledged(self) -> int:
        """Messages put and not yet acknowledged."""
        return len(self._sent)

    def add(self, key: str, payload: bytes) -> int:
        """Queue a message; returns how many of the oldest were dropped to stay within `limit`."""
        self._waiting.append((key, payload))
        dropped = max(0, len(self._waiting) - self.limit)
        for _ in range(dropped):
            self._waiting.popleft()
        return dropped

    def peek(self) -> tuple[str, bytes] | None:
        """The next message to put, if any."""
        return self._waiting[0] if self._waiting else None

    def mark_sent(self, message: tuple[str, bytes]) -> None:
        """`message` (from `peek`) was put: it now waits for its acknowledgement. (A sender thread puts
        without holding the caller's lock, so the message may have moved or been dropped meanwhile.)"""
        if message in self._waiting:
            self._waiting.remove(message)
        self._sent[digest(message[1])] = (self._clock(), *message)
        self._sent.move_to_end(digest(message[1]))
        self.mark_expired()

    def flush(self, put: Callable[[str, bytes], bool]) -> int:
        """Put waiting messages in order until `put` says it cannot (no subscriber reachable); returns how
        many were put."""
        count = 0
        while (message := self.peek()) is not None and put(*message):
            self.mark_sent(message)
            count += 1
        self.mark_expired()
        return count

    def mark_expired(self) -> None:
        """Give up on messages unacknowledged for longer than the window (or beyond `limit` of them)."""
        horizon = self._clock() - self.window_s
        while self._sent and (len(self._sent) > self.limit or next(iter(self._sent.values()))[0] < horizon):
            self._sent.popitem(last=False)
            self.expired += 1

    def acknowledge(self, delivered: bytes) -> bool:
        """The server gateway delivered the payload with this digest; True if it was waiting for that."""
        return self._sent.pop(delivered, None) is not None

    def resend(self, older_than_s: float = 0.0) -> int:
        """Put unacknowledged messages sent more than `older_than_s` ago back in front, in order (all of them
        when the link came back); returns how many."""
        horizon = self._clock() - older_than_s
        again = [(d, key, payload) for d, (sent, key, payload) in self._sent.items() if sent <= horizon]
        for d, _, _ in again:
            del self._sent[d]
        self._waiting.extendleft(reversed([(key, payload) for _, key, payload in again]))
        return len(again)


class RecentDigests:
    """The SHA-256 digests of the last `limit` payloads delivered (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._digests: OrderedDict[bytes, None] = OrderedDict()

    def seen(self, payload: bytes) -> bool:
        """True if `payload` was delivered before (a copy); otherwise remember it and return False."""
        key = digest(payload)
        with self._lock:
            if key in self._digests:
                self._digests.move_to_end(key)
                return True
            self._digests[key] = None
            while len(self._digests) > self.limit:
                self._digests.popitem(last=False)
            return False
