"""Verification of incoming signed records: updates at the aggregator, manifests at the key service,
round configs and models at the edge.

Every refusal is a `VerificationError` subclass with a machine-readable `reason`, so a node can
count rejections by reason and keep running; nothing else escapes `verify()`. Cheap checks run
before the signature check; the duplicate check runs after it, so a forged package can never
block an honest robot's slot in a round.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, TypeVar

from .identity import IdentityError, Role
from .kms import KeyRevoked, KMSError, UnknownKey
from .refusal import Reason, Refusal
from .wire import (
    DEFAULT_MAX_PACKAGE_BYTES,
    AggregateRequest,
    ContributionRecord,
    FieldTooLarge,
    ModelPackage,
    OutcomeReport,
    PackageTooLarge,
    RoundConfigPackage,
    RoundKeyAnnouncement,
    SignedRecord,
    SitePartialSum,
    UpdatePackage,
    WireFormatError,
)


class VerificationError(Refusal):
    """Base of all verification refusals; each subclass stands for one `Reason`."""

    reason = Reason.VERIFICATION_ERROR


class OversizedPackage(VerificationError):
    """The package or one of its fields exceeds its size limit."""

    reason = Reason.OVERSIZED


class MalformedPackage(VerificationError):
    """The bytes are not a valid record; `wire_reason` holds the decoder's specific code."""

    reason = Reason.MALFORMED

    def __init__(self, message: str, wire_reason: str) -> None:
        super().__init__(message)
        self.wire_reason = wire_reason


class UnknownSigner(VerificationError):
    """The signer is not enrolled in the KMS (or not in the role this record needs)."""

    reason = Reason.UNKNOWN_SIGNER


class RevokedSigner(VerificationError):
    """The signer's key was revoked."""

    reason = Reason.REVOKED_SIGNER


class KeyServiceUnavailable(VerificationError):
    """The KMS could not answer (e.g. its audit log failed verification)."""

    reason = Reason.KMS_ERROR


class BadSignature(VerificationError):
    """The signature does not verify under the signer's enrolled key."""

    reason = Reason.BAD_SIGNATURE


class ReplayedPackage(VerificationError):
    """The package belongs to an earlier round."""

    reason = Reason.REPLAYED_ROUND


class WrongRound(VerificationError):
    """The package names a round that has not started."""

    reason = Reason.WRONG_ROUND


class WrongRoundSeed(VerificationError):
    """The package's round seed differs from the round config's."""

    reason = Reason.WRONG_ROUND_SEED


class WrongConfigDigest(VerificationError):
    """The package binds a different round-config digest."""

    reason = Reason.WRONG_CONFIG_DIGEST


class WrongModelVersion(VerificationError):
    """The package was trained from a different model version than the round's."""

    reason = Reason.WRONG_MODEL_VERSION


class DeadlinePassed(VerificationError):
    """The package arrived after the round's deadline."""

    reason = Reason.DEADLINE_PASSED


class PayloadSizeMismatch(VerificationError):
    """Bodies or key ciphertext do not have the size the round's parameters imply."""

    reason = Reason.PAYLOAD_SIZE_MISMATCH


class DuplicateRobot(VerificationError):
    """The robot already contributed to this round."""

    reason = Reason.DUPLICATE_ROBOT


class QuorumNotMet(VerificationError):
    """A manifest names fewer distinct valid contributors than the round's quorum."""

    reason = Reason.QUORUM_NOT_MET


class UntrustedRoundKey(VerificationError):
    """The round's key-service key is not signed by the key service for exactly this round and parameters."""

    reason = Reason.UNTRUSTED_ROUND_KEY


class StaleModel(VerificationError):
    """A model package does not advance the current model version (rollback attempt)."""

    reason = Reason.STALE_MODEL


class UnknownSite(VerificationError):
    """A site partial sum names a site the round lists no site aggregator for."""

    reason = Reason.UNKNOWN_SITE


class ForeignRobot(VerificationError):
    """A site partial sum carries a robot the round does not assign to that site."""

    reason = Reason.FOREIGN_ROBOT


class KeyResolver(Protocol):
    """Where public keys come from: the `KeyManagementSystem`, or `PinnedKeys` on an edge node."""

    def public_key_for(self, key_id: str, role: Role | None = None, as_of: float | None = None) -> bytes:
        """Public key of `key_id` (active at unix time `as_of`, if given); raises kms.UnknownKey / kms.KeyRevoked."""


@dataclass(frozen=True)
class PinnedKeys:
    """A fixed set of trusted public keys (e.g. the server key pinned on a robot)."""

    keys: dict[str, tuple[Role, bytes]]

    def public_key_for(self, key_id: str, role: Role | None = None, as_of: float | None = None) -> bytes:
        """Pinned public key of `key_id` in `role`; raises kms.UnknownKey otherwise."""
        entry = self.keys.get(key_id)
        if entry is None or (role is not None and entry[0] != Role(role)):
            raise UnknownKey(f'no pinned key {key_id!r} in role {role}')
        return entry[1]


R = TypeVar('R', bound=SignedRecord)


def decode(record_type: type[R], data: bytes, max_bytes: int | None = None) -> R:
    """Deserialize, turning wire errors into `OversizedPackage` or `MalformedPackage`."""
    try:
        return record_type.deserialize(data, max_bytes)
    except (PackageTooLarge, FieldTooLarge) as error:
        raise OversizedPackage(str(error)) from None
    except WireFormatError as error:
        raise MalformedPackage(str(error), error.reason) from None


def check_signature(record: SignedRecord | ContributionRecord, keys: KeyResolver, signer: str,
                    roles: Iterable[Role], as_of: float | None = None) -> None:
    """Signer enrolled and not revoked in one of `roles`, and the record's signature verifies under
    its key (the version active at unix time `as_of` if given: a rotation applies from the next round)."""
    public_key = None
    for role in roles:
        try:
            public_key = keys.public_key_for(signer, role, as_of=as_of)
            break
        except KeyRevoked:
            raise RevokedSigner(f'{signer!r} is revoked') from None
        except UnknownKey:
            continue
        except KMSError as error:
            raise KeyServiceUnavailable(f'key lookup failed: {error.reason}') from None
    if public_key is None:
        raise UnknownSigner(f'{signer!r} is not enrolled in a permitted role')
    try:
        record.verify_signature(public_key)
    except IdentityError as error:
        raise BadSignature(f'{signer!r}: {error}') from None


def _check_binding(record: UpdatePackage | ContributionRecord, config: RoundConfigPackage,
                   config_digest: bytes) -> None:
    if record.round_id < config.round_id:
        raise ReplayedPackage(f'package for round {record.round_id}, current round is {config.round_id}')
    if record.round_id != config.round_id:
        raise WrongRound(f'package for round {record.round_id}, current round is {config.round_id}')
    if record.round_seed != config.round_seed:
        raise WrongRoundSeed(f'round {config.round_id}: round seed differs')
    if record.config_digest != config_digest:
        raise WrongConfigDigest(f'round {config.round_id}: round-config digest differs')
    if record.model_version != config.model_version:
        raise WrongModelVersion(f'model version {record.model_version}, round uses {config.model_version}')


class RoundVerifier:
    """Aggregator-side gate for one round: every update is checked before its ciphertexts are summed."""

    def __init__(self, keys: KeyResolver, round_config: RoundConfigPackage, *,
                 max_package_bytes: int = DEFAULT_MAX_PACKAGE_BYTES,
                 expected_bodies_bytes: int | None = None, expected_key_ciphertext_bytes: int | None = None,
                 clock: Callable[[], float] | None = time.time) -> None:
        self.keys = keys
        self.round_config = round_config
        self.config_digest = round_config.config_digest()
        self.max_package_bytes = max_package_bytes
        self.expected_bodies_bytes = expected_bodies_bytes
        self.expected_key_ciphertext_bytes = expected_key_ciphertext_bytes
        self.clock = clock
        self._accepted: dict[str, ContributionRecord] = {}

    def verify(self, data: bytes) -> UpdatePackage:
        """Decode and check one update; on success the robot is recorded as having contributed."""
        package = decode(UpdatePackage, data, self.max_package_bytes)
        _check_binding(package, self.round_config, self.config_digest)
        if self.clock is not None and self.clock() > self.round_config.deadline:
            raise DeadlinePassed(f'round {self.round_config.round_id} closed at {self.round_config.deadline}')
        if self.expected_bodies_bytes is not None and len(package.bodies) != self.expected_bodies_bytes:
            raise PayloadSizeMismatch(f'sealed bodies are {len(package.bodies)} bytes, '
                                      f'expected {self.expected_bodies_bytes}')
        if (self.expected_key_ciphertext_bytes is not None
                and len(package.key_ciphertext) != self.expected_key_ciphertext_bytes):
            raise PayloadSizeMismatch(f'key ciphertext is {len(package.key_ciphertext)} bytes, '
                                      f'expected {self.expected_key_ciphertext_bytes}')
        check_signature(package, self.keys, package.robot_id, (Role.ROBOT,), as_of=self.round_config.created_at)
        if package.robot_id in self._accepted:
            raise DuplicateRobot(f'{package.robot_id!r} already contributed to round {self.round_config.round_id}')
        self._accepted[package.robot_id] = package.contribution()
        return package

    def verify_site_sum(self, data: bytes) -> SitePartialSum:
        """Decode and check a site aggregator's partial sum: bound to this round, signed by the
        aggregator the round names for its site, sealed sum of the round's size, and every
        contribution a valid update signature of a distinct robot of that site that has not
        contributed yet. On success all its robots are recorded; nothing is recorded otherwise.
        What cannot be checked: that the sum is the sum of those robots' bodies."""
        record = decode(SitePartialSum, data, self.max_package_bytes)
        if record.round_id != self.round_config.round_id:
            raise (ReplayedPackage if record.round_id < self.round_config.round_id else WrongRound)(
                f'partial sum for round {record.round_id}, current round is {self.round_config.round_id}')
        if record.config_digest != self.config_digest:
            raise WrongConfigDigest(f'round {self.round_config.round_id}: round-config digest differs')
        if self.clock is not None and self.clock() > self.round_config.deadline:
            raise DeadlinePassed(f'round {self.round_config.round_id} closed at {self.round_config.deadline}')
        site = self.round_config.site(record.site_id)
        if site is None:
            raise UnknownSite(f'round {self.round_config.round_id} names no site aggregator for {record.site_id!r}')
        if record.signer_key_id != site.signer_key_id:
            raise UnknownSigner(f'{record.signer_key_id!r} is not the site aggregator of {site.site_id!r}')
        if self.expected_bodies_bytes is not None and len(record.summed_bodies) != self.expected_bodies_bytes:
            raise PayloadSizeMismatch(f'sealed partial sum is {len(record.summed_bodies)} bytes, '
                                      f'expected {self.expected_bodies_bytes}')
        check_signature(record, self.keys, record.signer_key_id, (Role.SITE_AGGREGATOR,),
                        as_of=self.round_config.created_at)
        if not record.contributions:
            raise QuorumNotMet(f'site {site.site_id!r} sent a partial sum of no robots')
        robots: set[str] = set()
        for contribution in record.contributions:
            robot = contribution.robot_id
            if robot not in site.robots:
                raise ForeignRobot(f'{robot!r} is not a robot of site {site.site_id!r} in this round')
            if robot in robots or robot in self._accepted:
                raise DuplicateRobot(f'{robot!r} already contributed to round {self.round_config.round_id}')
            _check_binding(contribution, self.round_config, self.config_digest)
            if (self.expected_key_ciphertext_bytes is not None
                    and len(contribution.key_ciphertext) != self.expected_key_ciphertext_bytes):
                raise PayloadSizeMismatch(f'{robot!r}: key ciphertext is {len(contribution.key_ciphertext)} bytes, '
                                          f'expected {self.expected_key_ciphertext_bytes}')
            check_signature(contribution, self.keys, robot, (Role.ROBOT,), as_of=self.round_config.created_at)
            robots.add(robot)
        for contribution in record.contributions:
            self._accepted[contribution.robot_id] = contribution
        return record

    def forget(self, robot_id: str) -> None:
        """Take a robot's accepted update out of the manifest (e.g. it was revoked mid-round)."""
        self._accepted.pop(robot_id, None)

    def contributions(self) -> list[ContributionRecord]:
        """Signed records (without bodies) of every accepted update, for the key service's manifest."""
        return list(self._accepted.values())


def verify_round_config(data: bytes, keys: KeyResolver, max_bytes: int | None = None) -> RoundConfigPackage:
    """Decode a round config and check it is signed by an enrolled server or aggregator key."""
    config = decode(RoundConfigPackage, data, max_bytes)
    check_signature(config, keys, config.signer_key_id, (Role.SERVER, Role.AGGREGATOR))
    return config


def verify_round_key(config: RoundConfigPackage, keys: KeyResolver) -> RoundKeyAnnouncement:
    """The round's key-service lattice key, checked to be signed by the key service named in the
    config for exactly this round and these lattice parameters (so no aggregator can substitute one)."""
    try:
        announcement = decode(RoundKeyAnnouncement, config.round_key)
    except VerificationError as exc:
        raise UntrustedRoundKey(f'round {config.round_id}: round key does not decode ({exc})') from None
    if announcement.signer_key_id != config.key_service_key_id:
        raise UntrustedRoundKey(f'round {config.round_id}: round key signed by {announcement.signer_key_id!r}, '
                                f'the config names {config.key_service_key_id!r}')
    check_signature(announcement, keys, announcement.signer_key_id, (Role.KEY_SERVICE,))
    announced = (announcement.round_id, announcement.security_level, announcement.ring_degree,
                 announcement.modulus_bits, announcement.plaintext_bits)
    expected = (config.round_id, config.security_level, config.ring_degree, config.modulus_bits,
                config.plaintext_bits)
    if announced != expected:
        raise UntrustedRoundKey(f'round {config.round_id}: round key was issued for (round, level, n, log q, b) = '
                                f'{announced}, the config says {expected}')
    return announcement


def verify_model_package(data: bytes, keys: KeyResolver, current_version: int | None = None,
                         max_bytes: int | None = None) -> ModelPackage:
    """Decode a model package, check the server's signature and that it advances `current_version`."""
    model = decode(ModelPackage, data, max_bytes)
    check_signature(model, keys, model.signer_key_id, (Role.SERVER,))
    if current_version is not None and model.model_version <= current_version:
        raise StaleModel(f'model version {model.model_version} does not advance {current_version}')
    return model


def verify_outcome_report(data: bytes, keys: KeyResolver) -> OutcomeReport:
    """Decode an outcome report and check it is signed by the enrolled, unrevoked robot it names."""
    report = decode(OutcomeReport, data)
    check_signature(report, keys, report.robot_id, (Role.ROBOT,))
    return report


def verify_aggregate_request(data: bytes, keys: KeyResolver, round_config: RoundConfigPackage,
                             max_bytes: int | None = None) -> AggregateRequest:
    """Key-service check of a manifest: aggregator-signed, bound to the round, and at least `quorum`
    distinct robots, each enrolled, not revoked, with a valid update signature for this round."""
    request = decode(AggregateRequest, data, max_bytes)
    check_signature(request, keys, request.signer_key_id, (Role.AGGREGATOR,))
    digest = round_config.config_digest()
    if request.round_id != round_config.round_id:
        raise (ReplayedPackage if request.round_id < round_config.round_id else WrongRound)(
            f'request for round {request.round_id}, current round is {round_config.round_id}')
    if request.config_digest != digest:
        raise WrongConfigDigest('aggregate request binds a different round-config digest')
    robots = set()
    for contribution in request.contributions:
        if contribution.robot_id in robots:
            raise DuplicateRobot(f'{contribution.robot_id!r} appears twice in the manifest')
        _check_binding(contribution, round_config, digest)
        check_signature(contribution, keys, contribution.robot_id, (Role.ROBOT,), as_of=round_config.created_at)
        robots.add(contribution.robot_id)
    if len(robots) < round_config.quorum:
        raise QuorumNotMet(f'{len(robots)} contributors, quorum is {round_config.quorum}')
    return request
