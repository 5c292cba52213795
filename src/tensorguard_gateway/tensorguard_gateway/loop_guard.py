"""The loop guard: a message a gateway published into a DDS domain is never bridged back out (ROS-free).

Two gateways can share a DDS domain (a site next to the fleet server, or two sites on one network).
Then an update the server gateway publishes into the domain would be seen by the site gateway and
sent to the Zenoh network again, and round again for ever. Each received DDS message carries its
publisher's global id (rmw ``publisher_gid``); the guard drops a message whose publisher belongs to
a gateway node (a node of the gateway's name, in any namespace), whatever process it runs in. It
learns publishers from the ROS graph, asking again only for a publisher it has not seen.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping


class LoopGuard:
    """Tells whether a DDS message was published by a gateway (so it must not be bridged again)."""

    def __init__(self, gateway_node_name: str) -> None:
        self._name = gateway_node_name
        self._lock = threading.Lock()
        self._known: dict[bytes, bool] = {}
        self.dropped = 0

    def from_gateway(self, publisher_gid: bytes, publishers: Callable[[], Mapping[bytes, str]]) -> bool:
        """True (and counted) if `publisher_gid` is a gateway's publisher; `publishers` gives the topic's
        current publishers (gid -> node name) and is only called for a gid not seen before."""
        with self._lock:
            known = self._known.get(publisher_gid)
        if known is None:
            current = {gid: node == self._name for gid, node in publishers().items()}
            with self._lock:
                self._known.update(current)
                known = self._known.setdefault(publisher_gid, False)
        if known:
            with self._lock:
                self.dropped += 1
        return known
