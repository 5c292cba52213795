"""Delivery across a link that can be cut (ROS-free): the site gateway's outbox and the server gateway's
memory of what it delivered.

Zenoh drops a put no subscriber is reachable for, and acknowledges nothing end to end: puts queued in a
session that dies with a cut link are lost with it. So the site gateway holds messages for the server in
an `Outbox` while no server gateway is subscribed, keeps what it sent in the last `window_s` seconds, and
on a link that comes back sends those again ahead of the rest; the server gateway drops the copies that
had arrived (`RecentDigests`).
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class Outbox:
    """Messages (key, payload) waiting to be put, in order, at most `limit`; and the ones put in the last
    `window_s` seconds (at most `limit`), for `resend`."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._waiting: deque[tuple[str, bytes]] = deque()
        self._sent: deque[tuple[float, str, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, key: str, payload: bytes) -> int:
        """Queue a message; returns how many of the oldest were dropped to stay within `limit`."""
        self._waiting.append((key, payload))
        dropped = max(0, len(self._waiting) - self.limit)
        for _ in range(dropped):
            self._waiting.popleft()
        return dropped

    def flush(self, put: Callable[[str, bytes], bool]) -> int:
        """Put waiting messages in order until `put` says it cannot (no subscriber reachable); returns how
        many were put."""
        count = 0
        while self._waiting and put(*self._waiting[0]):
            key, payload = self._waiting.popleft()
            self._sent.append((self._clock(), key, payload))
            count += 1
        horizon = self._clock() - self.window_s
        while self._sent and (len(self._sent) > self.limit or self._sent[0][0] < horizon):
            self._sent.popleft()
        return count

    def resend(self) -> int:
        """The link came back: put what was sent in the window back in front, in order; returns how many."""
        count = len(self._sent)
        self._waiting.extendleft(reversed([(key, payload) for _, key, payload in self._sent]))
        self._sent.clear()
        return count


class RecentDigests:
    """The SHA-256 digests of the last `limit` payloads delivered (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._digests: OrderedDict[bytes, None] = OrderedDict()

    def seen(self, payload: bytes) -> bool:
        """True if `payload` was delivered before (a copy); otherwise remember it and return False."""
        digest = hashlib.sha256(payload).digest()
        with self._lock:
            if digest in self._digests:
                self._digests.move_to_end(digest)
                return True
            self._digests[digest] = None
            while len(self._digests) > self.limit:
                self._digests.popitem(last=False)
            return False
