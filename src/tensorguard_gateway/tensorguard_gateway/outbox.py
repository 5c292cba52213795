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
import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


def digest(payload: bytes) -> bytes:
    """SHA-256 of a payload: how the server gateway acknowledges a delivered record."""
    return hashlib.sha256(payload).digest()


@dataclass(eq=False)
class _Entry:
    """A message and its place in the order messages were added (kept when it is sent again)."""

    order: int
    key: str
    payload: bytes
    sent: float = 0.0  # when it was last put


class Outbox:
    """Messages (key, payload) waiting to be put, in the order they were added, at most `limit`; and the ones
    put but not yet acknowledged (at most `limit`, for at most `window_s` seconds), sent again by `resend`
    until the server gateway acknowledges them. What is sent again keeps its original place: after a long cut,
    when messages were put again at different times, they still leave in the order they were added (the
    aggregator refuses an outcome report older than one it accepted)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._order = itertools.count()
        self._waiting: deque[_Entry] = deque()
        self._sent: OrderedDict[bytes, _Entry] = OrderedDict()  # by digest, oldest put first
        self.expired = 0  # given up on: never acknowledged within the window

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def unacknowledged(self) -> int:
        """Messages put and not yet acknowledged."""
        return len(self._sent)

    def add(self, key: str, payload: bytes) -> int:
        """Queue a message; returns how many of the oldest were dropped to stay within `limit`."""
        self._waiting.append(_Entry(next(self._order), key, payload))
        dropped = max(0, len(self._waiting) - self.limit)
        for _ in range(dropped):
            self._waiting.popleft()
        return dropped

    def peek(self) -> tuple[str, bytes] | None:
        """The next message to put, if any."""
        return (self._waiting[0].key, self._waiting[0].payload) if self._waiting else None

    def mark_sent(self, message: tuple[str, bytes]) -> None:
        """`message` (from `peek`) was put: it now waits for its acknowledgement. (A sender thread puts
        without holding the caller's lock, so the message may have moved or been dropped meanwhile.)"""
        key, payload = message
        entry = next((e for e in self._waiting if e.payload is payload and e.key == key), None)
        if entry is None:
            entry = _Entry(next(self._order), key, payload)
        else:
            self._waiting.remove(entry)
        entry.sent = self._clock()
        self._sent[digest(payload)] = entry
        self._sent.move_to_end(digest(payload))
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
        while self._sent and (len(self._sent) > self.limit or next(iter(self._sent.values())).sent < horizon):
            self._sent.popitem(last=False)
            self.expired += 1

    def acknowledge(self, delivered: bytes) -> bool:
        """The server gateway delivered the payload with this digest; True if it was waiting for that."""
        return self._sent.pop(delivered, None) is not None

    def resend(self, older_than_s: float = 0.0) -> int:
        """Put unacknowledged messages sent more than `older_than_s` ago (all of them when the link came back)
        back among the waiting ones, in the order they were first added; returns how many."""
        horizon = self._clock() - older_than_s
        again = [d for d, entry in self._sent.items() if entry.sent <= horizon]
        if again:
            self._waiting = deque(sorted([*self._waiting, *(self._sent.pop(d) for d in again)],
                                         key=lambda entry: entry.order))
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
