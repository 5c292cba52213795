"""Site-level aggregation (opt-in): a site gateway sums its robots' lattice bodies before the WAN.

With the fleet's `site_aggregation` switch on, each round config (signed by the aggregator) lists
the site aggregators: per site, the robots it serves, the X25519 key those robots seal their
bodies to (instead of the aggregator's round transport key) and the enrolled identity (role
`site_aggregator`) that signs the site's sums. A robot learns where to seal only from that signed
config (`update_codec.body_seal_key`), never from the gateway.

The site's `SiteCollector` verifies each robot's signed update (the robots' public keys are public),
opens the seal, checks the bodies parse, and adds them. Its `SitePartialSum` carries one sum of the
bodies, sealed to the aggregator's round transport key and bound to site, round and config, plus
every robot's signed `ContributionRecord` unchanged (header, digest of its sealed bodies, its own
key ciphertext). Bodies are ring-LWE ciphertexts that add coefficient-wise (secagg.py), so the
aggregator adds a partial sum like one robot's bodies; the key service still sums the robots' key
ciphertexts itself and verifies every robot's signature. What is lost is said in
docs/site-aggregation.md: nobody can check that the partial sum is the sum of those robots' bodies.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from . import hybrid
from .identity import IdentityError, Role, Signer, check_id
from .params import SecAggParams
from .secagg import BodyCiphertext, SecAggError, sum_bodies
from .update_codec import RoundMismatch, body_seal_context
from .verify import ForeignRobot, KeyResolver, RoundVerifier, UnknownSite, VerificationError
from .wire import RoundConfigPackage, SiteAggregatorEntry, SitePartialSum, UpdatePackage, WireFormatError

__all__ = ['SiteCollector', 'SiteSumError', 'site_aggregators_from_mapping', 'site_sum_seal_context']


class SiteSumError(ValueError):
    """A site aggregator cannot serve this round (its key or parameters differ from the round's)."""


def site_sum_seal_context(site_id: str, round_id: int, config_digest: bytes) -> bytes:
    """What a sealed partial sum is bound to: one site, one round, one round config."""
    return f'TensorGuard/site-sum/{site_id}/{round_id}/'.encode() + bytes(config_digest)


def site_aggregators_from_mapping(sites: Mapping[str, Mapping]) -> tuple[SiteAggregatorEntry, ...]:
    """Entries for the round config from ``{site_id: {signer_key_id, seal_key (64 hex), robots}}``;
    raises ValueError naming the site and what is wrong."""
    entries = []
    for site_id, spec in sites.items():
        try:
            check_id(site_id, 'site id')
            if set(spec) != {'signer_key_id', 'seal_key', 'robots'}:
                raise ValueError(f'needs exactly signer_key_id, seal_key and robots, got {sorted(spec)}')
            if not spec['robots']:
                raise ValueError('lists no robots')
            entries.append(SiteAggregatorEntry(site_id=site_id, signer_key_id=spec['signer_key_id'],
                                               seal_key=bytes.fromhex(str(spec['seal_key'])),
                                               robots=tuple(spec['robots'])))
        except (ValueError, TypeError, AttributeError, WireFormatError, IdentityError) as exc:
            raise ValueError(f'site aggregator {site_id!r}: {exc}') from None
    robots = [robot for entry in entries for robot in entry.robots]
    if len(set(robots)) != len(robots):
        raise ValueError('a robot is listed under two site aggregators')
    return tuple(entries)


class SiteCollector:
    """A site gateway's sum for one round: verified robots' bodies in, one signed partial sum out.

    `config` must already be verified (`verify.verify_round_config`): it says which robots and seal
    key belong to the site; `robot_keys` resolves the robots' enrolled public keys.
    """

    def __init__(self, config: RoundConfigPackage, site_id: str, seal_key: hybrid.SealedBoxKey,
                 robot_keys: KeyResolver, signer: Signer, params: SecAggParams,
                 clock: Callable[[], float] | None = time.time) -> None:
        entry = config.site(site_id)
        if entry is None:
            raise UnknownSite(f'round {config.round_id} names no site aggregator for {site_id!r}')
        if seal_key.public_key != entry.seal_key:
            raise SiteSumError(f'round {config.round_id} announces another seal key for site {site_id!r}')
        if signer.key_id != entry.signer_key_id or signer.role != Role.SITE_AGGREGATOR:
            raise SiteSumError(f'round {config.round_id} names {entry.signer_key_id!r} as the site aggregator, '
                               f'this gateway signs as {signer.key_id!r}')
        ours = (params.n, params.coefficient_bits, params.plaintext_bits)
        if (config.ring_degree, config.modulus_bits, config.plaintext_bits) != ours:
            raise RoundMismatch(f'round {config.round_id} announces (n, log q, b) = '
                                f'{(config.ring_degree, config.modulus_bits, config.plaintext_bits)}, '
                                f'this site aggregator is configured for {ours}')
        self.config, self.entry, self.params = config, entry, params
        self._seal_key, self._signer = seal_key, signer
        self._verifier = RoundVerifier(robot_keys, config, expected_key_ciphertext_bytes=params.key_ciphertext_bytes,
                                       clock=clock)
        self._total: BodyCiphertext | None = None

    @property
    def robots(self) -> list[str]:
        """Robots whose bodies are in the sum, in order of arrival."""
        return [c.robot_id for c in self._verifier.contributions()]

    @property
    def complete(self) -> bool:
        """Every robot the round assigns to this site is in the sum."""
        return set(self.entry.robots) <= set(self.robots)

    def add(self, data: bytes) -> UpdatePackage:
        """Verify one robot's update, open its sealed bodies and add them; raises `VerificationError`
        (with its reason) and records nothing if the update is refused."""
        package = self._verifier.verify(data)
        try:
            if package.robot_id not in self.entry.robots:
                raise ForeignRobot(f'{package.robot_id!r} is not a robot of site {self.entry.site_id!r}')
            body = self._open(package)
        except VerificationError:
            self._verifier.forget(package.robot_id)
            raise
        self._total = body if self._total is None else sum_bodies([self._total, body])
        return package

    def _open(self, package: UpdatePackage) -> BodyCiphertext:
        context = body_seal_context(package.robot_id, package.round_id, package.config_digest)
        try:
            plain = self._seal_key.open(package.bodies, context)
            body = BodyCiphertext.from_bytes(plain, self.params, max(package.body_chunks, 1) * self.params.n)
        except hybrid.HybridError as exc:
            raise VerificationError(f'{package.robot_id}: sealed bodies do not open: {exc}',
                                    reason='unsealing_failed') from None
        except SecAggError as exc:
            raise VerificationError(f'{package.robot_id}: bodies do not parse: {exc}',
                                    reason='malformed_bodies') from None
        if self._total is not None and body.chunks != self._total.chunks:
            raise VerificationError(f'{package.robot_id}: {body.chunks} body chunks, the site sum has '
                                    f'{self._total.chunks}', reason='payload_size_mismatch')
        return body

    def summed_body(self) -> BodyCiphertext:
        """The running sum of the accepted robots' bodies (still encrypted under their summed keys)."""
        if self._total is None:
            raise SiteSumError('no robot of the site has contributed')
        return self._total

    def partial_sum(self, created_at: float | None = None) -> bytes:
        """The signed `SitePartialSum` for the aggregator (the sum sealed to its round transport key)."""
        config = self.config
        digest = config.config_digest()
        sealed = hybrid.seal(config.aggregator_transport_key, self.summed_body().to_bytes(),
                             site_sum_seal_context(self.entry.site_id, config.round_id, digest))
        record = SitePartialSum(site_id=self.entry.site_id, round_id=config.round_id, config_digest=digest,
                                summed_bodies=sealed, contributions=tuple(self._verifier.contributions()),
                                signer_key_id=self._signer.key_id,
                                created_at=time.time() if created_at is None else created_at)
        return record.signed_by(self._signer).serialize()

