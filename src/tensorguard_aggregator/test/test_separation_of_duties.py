"""Separation of duties under attack (ROS-free, real aggregator and key-service cores on a provisioned
fleet directory): each test plays one row of the threat model in docs/secure-aggregation.md."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import pytest

from tensorguard_aggregator.key_service import DecryptionRefused, KeyServiceCore, KeyServiceSettings
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings
from tensorguard_crypto import update_codec
from tensorguard_crypto.fleet import AGGREGATOR_ID, FleetPaths, enroll_robot, provision_server
from tensorguard_crypto.identity import Identity
from tensorguard_crypto.keystore import KeyStoreError, load_key, unseal_secret
from tensorguard_crypto.secagg import (
    BodyCiphertext,
    KeyCiphertext,
    KeyService,
    KeyServiceSecretKey,
    SummedKey,
    unpack_residues,
)
from tensorguard_crypto.skellam import SkellamDecoder
from tensorguard_crypto.verify import VerificationError
from tensorguard_crypto.wire import AggregateRequest, AggregateResult, RoundKeyAnnouncement, SafetyStats, UpdatePackage
from tensorguard_learning.policy import MoEConfig, build_policy

PASSPHRASE = b'test passphrase, not a secret'
# The shipped fleet's noise level (config/fleet.yaml): low enough that one robot's decoded update
# is its vector almost exactly, which is what makes a leak of it matter.
SHARED = dict(security_level=128, plaintext_bits=20, max_clients=16, clipping_norm=2.0, noise_multiplier=0.003,
              min_clients=2)
ROBOTS = ('robot_a', 'robot_b', 'robot_c')


@dataclass
class Server:
    """A provisioned fleet: the aggregator and key-service cores, three enrolled robots."""

    paths: FleetPaths
    aggregator: Aggregator
    key_service: KeyServiceCore

    def open_round(self, quorum: int = 2):
        return self.aggregator.open_round(self.key_service.round_key(self.aggregator.next_round_id()), quorum=quorum)

    def restart_aggregator(self, **settings) -> Aggregator:
        self.aggregator = Aggregator(AggregatorSettings(fleet_dir=str(self.paths.root), quorum=2, **SHARED, **settings),
                                     PASSPHRASE)
        return self.aggregator

    def restart_key_service(self) -> KeyServiceCore:
        self.key_service = KeyServiceCore(KeyServiceSettings(fleet_dir=str(self.paths.root), **{
            k: SHARED[k] for k in ('security_level', 'plaintext_bits', 'max_clients', 'min_clients')}), PASSPHRASE)
        return self.key_service

    def decrypt(self) -> bytes:
        result, _ = self.key_service.decrypt(self.aggregator.current.config.serialize(),
                                             self.aggregator.aggregate_request())
        return result


@pytest.fixture()
def server(tmp_path, monkeypatch) -> Server:
    return provisioned_server(tmp_path, monkeypatch)


def provisioned_server(tmp_path, monkeypatch) -> Server:
    """A fleet directory with the server provisioned, an initial model and ROBOTS enrolled."""
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', PASSPHRASE.decode())
    paths = FleetPaths(tmp_path / 'fleet')
    provision_server(paths, PASSPHRASE)
    fleet = Server(paths, None, None)
    fleet.restart_aggregator()
    fleet.restart_key_service()
    fleet.aggregator.publish_model(build_policy(MoEConfig(tasks=('push-v3',), num_experts=2)), 0, 'initial')
    for robot in ROBOTS:
        enroll_robot(paths, robot, PASSPHRASE)
    return fleet


def robot_vector(server: Server, seed: int) -> np.ndarray:
    """A robot's update vector (norm under the clipping norm, so clipping leaves it as it is)."""
    dim = server.aggregator.current.codec.skellam.dim
    vector = np.random.default_rng(seed).normal(size=dim)
    return (vector / np.linalg.norm(vector) * 1.5).astype(np.float32)


def robot_update(server: Server, robot_id: str, vector: np.ndarray, identity: Identity | None = None,
                 bodies: bytes | None = None) -> bytes:
    """What an honest robot publishes for the open round (the library calls of EdgeClient.process_round)."""
    config = server.aggregator.current.config
    codec = server.aggregator.current.codec
    identity = identity or load_key(server.paths.robot_dir(robot_id) / 'identity.key', PASSPHRASE)
    round_key = RoundKeyAnnouncement.deserialize(config.round_key)
    parts = update_codec.encrypt_update(
        codec, round_key.public_key, update_codec.body_seal_key(config, robot_id),
        update_codec.body_seal_context(robot_id, config.round_id, config.config_digest()), vector)
    return UpdatePackage(
        robot_id=robot_id, round_id=config.round_id, round_seed=config.round_seed,
        config_digest=config.config_digest(), model_version=config.model_version, created_at=time.time(),
        body_chunks=parts.body_chunks, expert_metadata=(), safety_stats=SafetyStats(0.1, 1e-5, 0.0, 0.0, 0, 0),
        bodies=parts.bodies if bodies is None else bodies,
        key_ciphertext=parts.key_ciphertext).signed_by(identity).serialize()


def round_with_updates(server: Server, robots=ROBOTS) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
    """Open a round, have `robots` send updates, let the aggregator accept them; what a network
    listener records is the second value."""
    server.open_round()
    vectors = {robot: robot_vector(server, seed) for seed, robot in enumerate(robots)}
    recorded = {robot: robot_update(server, robot, vector) for robot, vector in vectors.items()}
    for blob in recorded.values():
        server.aggregator.accept(blob)
    return vectors, recorded


def key_service_round_secret(server: Server, round_id: int) -> KeyServiceSecretKey:
    """What a compromised key service (or a thief with its files and passphrase) holds during the round."""
    path = server.paths.server / 'key_service' / 'rounds' / str(round_id) / 'secret.sealed'
    secret = unseal_secret(path, PASSPHRASE, f'key_service/round/{round_id}'.encode())
    return KeyServiceSecretKey.from_bytes(secret, server.key_service.params)


def open_single_key(secret: KeyServiceSecretKey, key_ciphertext: bytes) -> SummedKey:
    """The attacker decrypts ONE robot's key ciphertext (no quorum check: the attacker runs its own code)."""
    params = secret.params
    ring = params.ring()
    ct = KeyCiphertext.from_bytes(key_ciphertext, params)
    s_ntt = ring.ntt(ring.from_signed(secret.s))
    noisy = ring.centered(ring.intt(ring.add(ct.c0, ring.pointwise(ct.c1, s_ntt))))
    key = np.floor_divide(noisy + params.key_scale // 2, params.key_scale)
    assert np.all(np.abs(key) <= 1), "a single key ciphertext must decrypt to the robot's ternary key"
    return SummedKey(params, 1, ring.ntt(ring.from_signed(key)))


def decode_single(server: Server, secret: KeyServiceSecretKey, key: SummedKey, body_bytes: bytes) -> np.ndarray:
    """Decrypt one body with one robot's key and decode it as a one-robot 'sum'."""
    codec = server.aggregator.current.codec
    params = codec.secagg
    residues = unpack_residues(body_bytes, codec.body_chunks * params.n, params.coefficient_bits) % np.uint64(params.q)
    body = BodyCiphertext(params, residues.reshape(codec.body_chunks, params.n))
    plain = KeyService(secret).decrypt_sum(body, key, codec.round_seed, update_codec.BODY_LABEL, codec.num_values)
    return SkellamDecoder(codec.skellam, codec.round_seed).decode_sum(plain)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_listener_holding_the_key_service_secret_reads_no_single_update(server):
    """Network listener + compromised key service: every update recorded, the round's lattice secret
    in hand. It recovers robot a's key k_a, but the body it needs travels sealed to the aggregator,
    so the best it can decrypt is noise. Control: adding the aggregator's transport secret (the
    documented aggregator + key service collusion) does recover the update, so the attack code works."""
    vectors, recorded = round_with_updates(server)
    config = server.aggregator.current.config
    secret = key_service_round_secret(server, config.round_id)
    package = UpdatePackage.deserialize(recorded['robot_a'])
    k_a = open_single_key(secret, package.key_ciphertext)
    body_len = server.aggregator.current.codec.body_bytes
    for offset in (0, 32):  # the sealed blob as it is, and without its ephemeral key prefix
        guess = decode_single(server, secret, k_a, package.bodies[offset:offset + body_len])
        assert abs(correlation(guess, vectors['robot_a'])) < 0.05
    context = update_codec.body_seal_context('robot_a', config.round_id, config.config_digest())
    opened = server.aggregator.current.transport.open(package.bodies, context)
    # One robot's share of the DP noise is of the order of its signal per coordinate here (dim ~1e5),
    # so a correct decryption correlates ~0.7; random guesses over 1e5 values stay within ~0.01.
    assert correlation(decode_single(server, secret, k_a, opened), vectors['robot_a']) > 0.5


def test_thief_of_the_server_files_after_the_round_opens_nothing_of_it(server, tmp_path):
    """After round r closed, a thief copies the whole server directory and even knows the passphrase.
    The round's key-service secret and the aggregator's transport secret are gone, and the key
    service will not make round r's key again."""
    _, recorded = round_with_updates(server)
    round_id = server.aggregator.current.config.round_id
    server.aggregator.candidate(server.decrypt())
    server.aggregator.close_round({'outcome': 'test'})
    stolen = tmp_path / 'stolen'
    shutil.copytree(server.paths.server, stolen)
    for context in (f'key_service/round/{round_id}', f'{AGGREGATOR_ID}/round/{round_id}/transport'):
        for path in stolen.rglob('*'):
            if path.is_file() and path.suffix != '.key':
                with pytest.raises(KeyStoreError):
                    unseal_secret(path, PASSPHRASE, context.encode())
    assert not list(stolen.rglob('secret.sealed')) and not list(stolen.rglob('transport.sealed'))
    with pytest.raises(DecryptionRefused) as refused:
        server.key_service.round_key(round_id)
    assert refused.value.reason == 'round_key_spent'
    outcomes = (server.paths.server / 'key_service' / 'decryptions.jsonl').read_text()
    assert '"round_key_destroyed"' in outcomes
    assert len(recorded) == 3


def test_an_aggregator_told_to_delete_closed_updates_leaves_none_for_a_thief(server):
    """With `delete_closed_updates` a closed round keeps its config, signed aggregate and outcome but
    no update (by default they stay, for audit); a restart finds nothing to resume or set aside."""
    for delete in (False, True):
        server.restart_aggregator(delete_closed_updates=delete)
        round_with_updates(server)
        directory = server.aggregator.current.directory
        server.aggregator.candidate(server.decrypt())
        server.aggregator.close_round({'outcome': 'test'})
        assert (directory / 'updates').exists() != delete
        assert len(list((directory / 'updates').glob('*.tgu'))) == (0 if delete else len(ROBOTS))
        assert all((directory / name).is_file() for name in ('config.bin', 'aggregate.bin', 'outcome.json'))
    kept, deleted = server.paths.rounds_dir / '1', server.paths.rounds_dir / '2'
    assert len(list(kept.glob('updates/*.tgu'))) == len(ROBOTS) and not list(deleted.rglob('*.tgu'))
    restarted = server.restart_aggregator(delete_closed_updates=True)
    assert restarted.current is None and not restarted.state_problems
    assert server.open_round().round_id == 3


def test_a_closed_round_whose_updates_cannot_be_deleted_is_counted_not_raised(server, monkeypatch):
    server.restart_aggregator(delete_closed_updates=True)
    round_with_updates(server)
    server.aggregator.candidate(server.decrypt())

    def refuse(path):  # a read-only disk: the updates stay; site_sums/ never existed
        raise PermissionError(f'read-only file system: {path}') if path.exists() else FileNotFoundError(path)
    monkeypatch.setattr(shutil, 'rmtree', refuse)
    server.aggregator.close_round({'outcome': 'test'})
    assert server.aggregator.current is None and server.aggregator.state_problems['storage_error'] == 1
    assert server.open_round().round_id == 2


def _subset_request(server: Server, robots: tuple[str, ...]) -> bytes:
    """A manifest the aggregator signs for a subset of the round's accepted robots, with their summed bodies."""
    current = server.aggregator.current
    total = update_codec.BodySum(current.codec)
    for robot in robots:
        package = UpdatePackage.deserialize((current.directory / 'updates' / f'{robot}.tgu').read_bytes())
        total.add(current.open_body(package))
    contributions = tuple(c for c in current.verifier.contributions() if c.robot_id in robots)
    return AggregateRequest(round_id=current.config.round_id, config_digest=current.config.config_digest(),
                            summed_bodies=total.to_bytes(), contributions=contributions,
                            signer_key_id=AGGREGATOR_ID, created_at=time.time()
                            ).signed_by(server.aggregator.aggregator_identity).serialize()


@pytest.mark.parametrize('first', [ROBOTS, ('robot_a', 'robot_b')])
def test_differencing_attack_second_decryption_of_a_round_is_refused_also_after_restart(server, first):
    """An aggregator that gets {a,b,c} and then {b,c} decrypted (or {a,b} then {a,c}) learns a's update
    by subtraction. The key service decrypts one manifest per round, ever, remembered on disk."""
    round_with_updates(server)
    config = server.aggregator.current.config.serialize()
    server.key_service.decrypt(config, _subset_request(server, first))
    for attempt in (('robot_b', 'robot_c'), ('robot_a', 'robot_c'), ROBOTS):
        with pytest.raises(DecryptionRefused) as refused:
            server.key_service.decrypt(config, _subset_request(server, attempt))
        assert refused.value.reason == 'round_already_decrypted'
    server.restart_key_service()
    with pytest.raises(DecryptionRefused) as refused:
        server.key_service.decrypt(config, _subset_request(server, ('robot_b', 'robot_c')))
    assert refused.value.reason == 'round_already_decrypted'
    log = (server.paths.server / 'key_service' / 'decryptions.jsonl').read_text()
    assert log.count('"round_already_decrypted"') == 4 and log.count('"decrypted"') == 1


def test_round_key_survives_a_key_service_restart_until_the_round_is_decrypted(server):
    round_id = server.aggregator.next_round_id()
    first = server.key_service.round_key(round_id)
    assert server.restart_key_service().round_key(round_id) == first


def _assert_sum_of(server: Server, result: bytes, vectors: list[np.ndarray]) -> None:
    candidate = server.aggregator.candidate(result)
    codec = server.aggregator.current.codec
    decoded = update_codec.decode_aggregate(codec, AggregateResult.deserialize(result).aggregate)
    bound = 6 * codec.skellam.aggregate_stddev(len(vectors)) + 4 / codec.skellam.scale
    assert np.max(np.abs(decoded - np.sum(vectors, axis=0))) < bound
    assert len(candidate.contributors) == len(vectors)


def test_robot_revoked_mid_round_is_taken_out_of_the_sum(server):
    vectors, _ = round_with_updates(server)
    server.aggregator.kms.revoke_key('robot_b', 'stolen robot')
    assert server.aggregator.drop_revoked() == ['robot_b']
    assert server.aggregator.current.contributors == ['robot_a', 'robot_c']
    _assert_sum_of(server, server.decrypt(), [vectors['robot_a'], vectors['robot_c']])


def test_aggregator_restarts_after_a_contributor_was_revoked_and_quarantines_its_update(server):
    vectors, _ = round_with_updates(server)
    server.aggregator.kms.revoke_key('robot_b', 'stolen robot')
    restarted = server.restart_aggregator()
    assert restarted.current.contributors == ['robot_a', 'robot_c']
    assert restarted.state_problems['quarantined'] == 1
    assert (restarted.current.directory / 'quarantine' / 'robot_b.tgu').exists()
    _assert_sum_of(server, server.decrypt(), [vectors['robot_a'], vectors['robot_c']])


def test_rotation_mid_round_takes_effect_from_the_next_round(server):
    """A robot rotates its key after its update was accepted: the round still decrypts with it."""
    vectors, _ = round_with_updates(server)
    server.aggregator.kms.rotate_key('robot_a', Identity.generate('robot_a').public_key_bytes(), 'routine')
    _assert_sum_of(server, server.decrypt(), list(vectors.values()))


def test_resume_sets_aside_a_corrupt_stored_update_and_an_unreadable_round(server):
    vectors, _ = round_with_updates(server)
    stored = server.aggregator.current.directory / 'updates' / 'robot_c.tgu'
    stored.write_bytes(stored.read_bytes()[:-100])
    restarted = server.restart_aggregator()
    assert restarted.current.contributors == ['robot_a', 'robot_b']
    assert sum(restarted.state_problems.values()) == 1
    config = restarted.current.directory / 'config.bin'
    config.write_bytes(b'\x00' * 64)
    restarted = server.restart_aggregator()
    assert restarted.current is None and restarted.state_problems['round_state_unreadable'] == 1
    assert server.open_round().round_id == 2


def test_bodies_of_the_wrong_size_and_bodies_sealed_for_another_robot_are_refused(server):
    server.open_round()
    vector = robot_vector(server, 0)
    short = robot_update(server, 'robot_a', vector, bodies=b'\x01' * 100)
    with pytest.raises(VerificationError) as refused:
        server.aggregator.accept(short)
    assert refused.value.reason == 'payload_size_mismatch'
    sealed_for_a = UpdatePackage.deserialize(robot_update(server, 'robot_a', vector)).bodies
    moved = robot_update(server, 'robot_b', vector, bodies=sealed_for_a)
    with pytest.raises(VerificationError) as refused:
        server.aggregator.accept(moved)
    assert refused.value.reason == 'unsealing_failed'
    assert server.aggregator.current.contributors == []
    assert server.aggregator.accept(robot_update(server, 'robot_b', vector)).robot_id == 'robot_b'
    assert os.listdir(server.aggregator.current.directory / 'updates') == ['robot_b.tgu']
