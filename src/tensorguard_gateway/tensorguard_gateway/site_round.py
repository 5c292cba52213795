"""A site gateway's site aggregation, round by round (ROS-free; docs/site-aggregation.md).

For each round config the fleet server sends (verified against the fleet's aggregator key in the
site's trust file), a `SiteRound` keeps one `tensorguard_crypto.site_sum.SiteCollector` if the config
names this site as an aggregator; else it keeps none and the gateway forwards its robots' updates as
without site aggregation. The gateway gives it each of its robots' updates of that round; the partial
sum is due once every robot the round assigns to the site has sent, or `margin_s` before the round's
deadline if at least one has, and is handed out once. An update of the round after that is refused
(`deadline_passed`): its body cannot join a sum already sent.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tensorguard_crypto.params import ParameterError, standard_params
from tensorguard_crypto.refusal import Reason, Refusal
from tensorguard_crypto.site_keys import SiteAggregatorKeys
from tensorguard_crypto.site_sum import SiteCollector, SiteSumError
from tensorguard_crypto.update_codec import RoundMismatch
from tensorguard_crypto.verify import UnknownSite, VerificationError, verify_round_config
from tensorguard_crypto.wire import UpdatePackage, WireFormatError


class SiteSumRefusal(Refusal):
    """A round config or update the site aggregator will not use; `reason` says why."""


class SiteRound:
    """The current round's site sum (module docstring). Thread-safe: configs and updates arrive on
    different threads."""

    def __init__(self, site_id: str, keys: SiteAggregatorKeys, margin_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.site_id = site_id
        self.margin_s = margin_s
        self._keys = keys
        self._clock = clock
        self._lock = threading.Lock()
        self._collector: SiteCollector | None = None
        self._round_id: int | None = None
        self._sent = False

    def on_config(self, data: bytes) -> bool:
        """A signed round config: start collecting for its round if it names this site (returns True), or
        stop (False). Raises `SiteSumRefusal` for a config that is not the fleet's or that this site's keys
        cannot serve; the previous round's state is then kept."""
        try:
            config = verify_round_config(data, self._keys.trust)
        except VerificationError as error:
            raise SiteSumRefusal(f'round config: {error}', reason=error.reason) from None
        with self._lock:
            if config.round_id == self._round_id:
                return self._collector is not None
        entry = config.site(self.site_id)
        collector = None
        if entry is not None:
            try:
                params = standard_params(config.security_level, config.plaintext_bits,
                                         max(len(entry.robots), config.min_clients), config.min_clients)
                collector = SiteCollector(config, self.site_id, self._keys.seal_key, self._keys.trust,
                                          self._keys.signer, params, clock=self._clock)
            except (SiteSumError, RoundMismatch, ParameterError, UnknownSite) as error:
                raise SiteSumRefusal(f'round {config.round_id}: {error}', reason=Reason.ROUND_PARAMETERS_MISMATCH) \
                    from None
        with self._lock:
            self._collector, self._round_id, self._sent = collector, config.round_id, False
        return collector is not None

    @property
    def round_id(self) -> int | None:
        """The round of the latest config this site has seen."""
        with self._lock:
            return self._round_id

    def takes(self, robot_id: str) -> bool:
        """True if the current round's site sum is for `robot_id`'s updates (else the gateway forwards them)."""
        with self._lock:
            return self._collector is not None and robot_id in self._collector.entry.robots

    def add(self, data: bytes) -> UpdatePackage:
        """Add one robot's signed update to the round's sum; `SiteSumRefusal` (with the verifier's reason) if it
        is refused, and nothing is recorded."""
        with self._lock:
            collector = self._collector
            if collector is None:
                raise SiteSumRefusal('no round of this site is open', reason=Reason.NO_OPEN_ROUND)
            try:
                round_id = UpdatePackage.deserialize(data).round_id
            except WireFormatError as error:
                raise SiteSumRefusal(f'update: {error}', reason=Reason.MALFORMED) from None
            if self._sent and round_id == self._round_id:
                raise SiteSumRefusal(f'round {round_id}: the site sum was already sent', reason=Reason.DEADLINE_PASSED)
            try:
                return collector.add(data)
            except VerificationError as error:
                raise SiteSumRefusal(str(error), reason=error.reason) from None

    def due(self) -> bytes | None:
        """The signed partial sum if it is due now (module docstring) and not yet handed out, else None."""
        with self._lock:
            collector = self._collector
            if collector is None or self._sent or not collector.robots:
                return None
            if not collector.complete and self._clock() < collector.config.deadline - self.margin_s:
                return None
            self._sent = True
            return collector.partial_sum()
