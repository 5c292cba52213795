"""Aggregator-side verification: each refusal is its own error, a bit flip anywhere is refused,
revocation applies to the very next package, manifests and server records are checked."""
import dataclasses
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.kms import KeyManagementSystem, KeyMetadata
from tensorguard_crypto.verify import (
    BadSignature,
    DeadlinePassed,
    DuplicateRobot,
    KeyServiceUnavailable,
    MalformedPackage,
    OversizedPackage,
    PayloadSizeMismatch,
    PinnedKeys,
    QuorumNotMet,
    ReplayedPackage,
    RevokedSigner,
    RoundVerifier,
    StaleModel,
    UnknownSigner,
    VerificationError,
    WrongConfigDigest,
    WrongModelVersion,
    WrongRound,
    WrongRoundSeed,
    verify_aggregate_request,
    verify_model_package,
    verify_round_config,
)
from tensorguard_crypto.wire import AggregateRequest, model_package

sys.path.insert(0, str(Path(__file__).parent))
from crypto_test_support import make_round_config, make_update  # noqa: E402


def _enrol(kms: KeyManagementSystem, identity: Identity) -> None:
    kms.register_key(identity.key_id, KeyMetadata(
        key_id=identity.key_id, created_at=datetime.now(timezone.utc), owner='fleet', security_level=128,
        role=identity.role, public_key=identity.public_key_bytes()))


@pytest.fixture
def fleet(tmp_path):
    kms = KeyManagementSystem(audit_log_path=tmp_path / 'audit.log')
    server = Identity.generate('server', Role.SERVER)
    aggregator = Identity.generate('aggregator', Role.AGGREGATOR)
    robots = [Identity.generate(f'robot_{i}', Role.ROBOT) for i in range(4)]
    for identity in (server, aggregator, *robots):
        _enrol(kms, identity)
    config = make_round_config(server, round_id=7)
    return kms, server, aggregator, robots, config


def test_valid_packages_accepted_and_listed(fleet):
    kms, _, _, robots, config = fleet
    verifier = RoundVerifier(kms, config)
    for robot in robots:
        assert verifier.verify(make_update(robot, config).serialize()).robot_id == robot.key_id
    assert [c.robot_id for c in verifier.contributions()] == [r.key_id for r in robots]


def test_unknown_robot(fleet):
    kms, _, _, _, config = fleet
    stranger = Identity.generate('robot_99', Role.ROBOT)
    with pytest.raises(UnknownSigner) as info:
        RoundVerifier(kms, config).verify(make_update(stranger, config).serialize())
    assert info.value.reason == 'unknown_signer'


def test_server_key_cannot_sign_updates(fleet):
    kms, server, _, _, config = fleet
    forged = make_update(Identity('server', Role.ROBOT, server.private_key), config)
    with pytest.raises(UnknownSigner):
        RoundVerifier(kms, config).verify(forged.serialize())


def test_revocation_effective_for_the_very_next_package(fleet, tmp_path):
    kms, _, _, robots, config = fleet
    verifier = RoundVerifier(kms, config)
    verifier.verify(make_update(robots[0], config).serialize())
    # Revoked through a separate KMS instance on the same files, as the CLI in another process would.
    KeyManagementSystem(audit_log_path=tmp_path / 'audit.log').revoke_key('robot_1', 'reported stolen')
    with pytest.raises(RevokedSigner) as info:
        verifier.verify(make_update(robots[1], config).serialize())
    assert info.value.reason == 'revoked_signer'
    verifier.verify(make_update(robots[2], config).serialize())


def test_duplicate_robot_in_one_round(fleet):
    kms, _, _, robots, config = fleet
    verifier = RoundVerifier(kms, config)
    first = make_update(robots[0], config).serialize()
    verifier.verify(first)
    for again in (first, make_update(robots[0], config).serialize()):
        with pytest.raises(DuplicateRobot):
            verifier.verify(again)


def test_replay_from_earlier_round_and_future_round(fleet):
    kms, server, _, robots, config = fleet
    earlier = make_round_config(server, round_id=6)
    with pytest.raises(ReplayedPackage):
        RoundVerifier(kms, config).verify(make_update(robots[0], earlier).serialize())
    later = make_round_config(server, round_id=8)
    with pytest.raises(WrongRound):
        RoundVerifier(kms, config).verify(make_update(robots[0], later).serialize())


@pytest.mark.parametrize('override, error', [
    ({'round_seed': b'\x55' * 32}, WrongRoundSeed), ({'config_digest': b'\x66' * 32}, WrongConfigDigest),
    ({'model_version': 2}, WrongModelVersion)])
def test_wrong_round_binding(fleet, override, error):
    kms, _, _, robots, config = fleet
    with pytest.raises(error):
        RoundVerifier(kms, config).verify(make_update(robots[0], config, **override).serialize())


def test_same_round_id_with_other_config_is_refused(fleet):
    kms, server, _, robots, config = fleet
    other = make_round_config(server, round_id=config.round_id)
    with pytest.raises(WrongRoundSeed):
        RoundVerifier(kms, config).verify(make_update(robots[0], other).serialize())


def test_every_single_bit_flip_is_refused(fleet):
    kms, _, _, robots, config = fleet
    data = make_update(robots[0], config, bodies_bytes=300).serialize()
    verifier = RoundVerifier(kms, config)
    reasons = {}
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            with pytest.raises(VerificationError) as info:
                verifier.verify(bytes(flipped))
            reasons[info.value.reason] = reasons.get(info.value.reason, 0) + 1
    assert sum(reasons.values()) == 8 * len(data)
    assert reasons['bad_signature'] > 0 and reasons['malformed'] > 0
    assert verifier.verify(data).robot_id == robots[0].key_id


def test_oversized_package_and_field(fleet):
    kms, _, _, robots, config = fleet
    data = make_update(robots[0], config, bodies_bytes=20_000).serialize()
    with pytest.raises(OversizedPackage) as info:
        RoundVerifier(kms, config, max_package_bytes=10_000).verify(data)
    assert info.value.reason == 'oversized'
    long_id = data.replace(b'\xa8robot_id\xa7robot_0', b'\xa8robot_id\xd9\xc8' + b'r' * 200)
    with pytest.raises(OversizedPackage):
        RoundVerifier(kms, config).verify(long_id)


def test_malformed_carries_wire_reason(fleet):
    kms, _, _, _, config = fleet
    with pytest.raises(MalformedPackage) as info:
        RoundVerifier(kms, config).verify(b'\x93\x01')
    assert info.value.wire_reason == 'malformed_msgpack'


def test_payload_sizes_and_deadline(fleet):
    kms, _, _, robots, config = fleet
    data = make_update(robots[0], config, bodies_bytes=1000).serialize()
    with pytest.raises(PayloadSizeMismatch):
        RoundVerifier(kms, config, expected_bodies_bytes=999).verify(data)
    with pytest.raises(PayloadSizeMismatch):
        RoundVerifier(kms, config, expected_key_ciphertext_bytes=1).verify(data)
    with pytest.raises(DeadlinePassed):
        RoundVerifier(kms, config, clock=lambda: config.deadline + 1).verify(data)
    assert RoundVerifier(kms, config, expected_bodies_bytes=1000, expected_key_ciphertext_bytes=600).verify(data)


def test_signature_by_other_enrolled_robot_is_bad_signature(fleet):
    kms, _, _, robots, config = fleet
    impostor = make_update(Identity('robot_0', Role.ROBOT, robots[1].private_key), config)
    with pytest.raises(BadSignature):
        RoundVerifier(kms, config).verify(impostor.serialize())


def test_tampered_kms_makes_lookups_fail_with_verification_error(fleet, tmp_path):
    kms, _, _, robots, config = fleet
    log = tmp_path / 'audit.log'
    log.write_text(log.read_text().replace('"robot_2"', '"robot_9"', 1))
    with pytest.raises(KeyServiceUnavailable):
        RoundVerifier(kms, config).verify(make_update(robots[0], config).serialize())


def test_round_config_and_model_package_verification(fleet):
    kms, server, aggregator, robots, config = fleet
    assert verify_round_config(config.serialize(), kms) == config
    with pytest.raises(UnknownSigner):
        verify_round_config(make_round_config(robots[0]).serialize(), kms)
    model = model_package(4, 3, 7, os.urandom(1000), 'deploy', 'server', time.time()).signed_by(server)
    pinned = PinnedKeys({'server': (Role.SERVER, server.public_key_bytes())})
    assert verify_model_package(model.serialize(), pinned, current_version=3) == model
    with pytest.raises(StaleModel):
        verify_model_package(model.serialize(), pinned, current_version=4)
    forged = model_package(5, 4, 8, b'evil', 'deploy', 'server', time.time()).signed_by(
        Identity('server', Role.SERVER, aggregator.private_key))
    with pytest.raises(BadSignature):
        verify_model_package(forged.serialize(), pinned)


def _request(aggregator, config, contributions):
    return AggregateRequest(round_id=config.round_id, config_digest=config.config_digest(), summed_bodies=b's',
                            contributions=tuple(contributions), signer_key_id='aggregator',
                            created_at=time.time()).signed_by(aggregator).serialize()


def test_key_service_manifest_checks(fleet, tmp_path):
    kms, server, aggregator, robots, config = fleet
    contributions = [make_update(robot, config).contribution() for robot in robots[:3]]
    assert len(verify_aggregate_request(_request(aggregator, config, contributions), kms, config).contributions) == 3
    with pytest.raises(QuorumNotMet):
        verify_aggregate_request(_request(aggregator, config, contributions[:2]), kms, config)
    with pytest.raises(DuplicateRobot):
        verify_aggregate_request(_request(aggregator, config, contributions[:2] + contributions[:1]), kms, config)
    forged = dataclasses.replace(contributions[2], key_ciphertext=b'changed')
    with pytest.raises(BadSignature):
        verify_aggregate_request(_request(aggregator, config, contributions[:2] + [forged]), kms, config)
    with pytest.raises(BadSignature):
        verify_aggregate_request(_request(Identity('aggregator', Role.AGGREGATOR, server.private_key), config,
                                          contributions), kms, config)
    kms.revoke_key('robot_2')
    with pytest.raises(RevokedSigner):
        verify_aggregate_request(_request(aggregator, config, contributions), kms, config)


@st.composite
def _corrupted(draw, data: bytes) -> bytes:
    mutated = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(mutated) - 1))
        mutated[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del mutated[draw(st.integers(0, len(mutated) - 1)):]
    return bytes(mutated)


def test_verifier_only_raises_verification_errors(tmp_path):
    kms = KeyManagementSystem(audit_log_path=tmp_path / 'audit.log')
    server, robot = Identity.generate('server', Role.SERVER), Identity.generate('robot_0', Role.ROBOT)
    _enrol(kms, robot)
    config = make_round_config(server)
    data = make_update(robot, config, bodies_bytes=200).serialize()

    @settings(max_examples=1500, derandomize=False, deadline=None, database=None)
    @given(st.one_of(_corrupted(data), st.binary(max_size=300)))
    def check(candidate):
        try:
            RoundVerifier(kms, config).verify(candidate)
        except VerificationError:
            return
        assert candidate == data

    check()
