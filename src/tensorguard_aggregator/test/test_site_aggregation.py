"""Site-level aggregation (ROS-free, real aggregator, key service and site collector on a provisioned
fleet): the decoded round is the robots' sum; what a compromised site gateway can and cannot do
(docs/site-aggregation.md) is played here, the attacks that succeed included."""
from __future__ import annotations

import dataclasses
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings, RoundError
from tensorguard_crypto import update_codec
from tensorguard_crypto.hybrid import SealedBoxKey, seal
from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.keystore import load_key
from tensorguard_crypto.kms import KeyMetadata
from tensorguard_crypto.secagg import BodyCiphertext
from tensorguard_crypto.site_sum import SiteCollector, SiteSumError, site_sum_seal_context
from tensorguard_crypto.skellam import SkellamEncoder
from tensorguard_crypto.verify import VerificationError
from tensorguard_crypto.wire import AggregateResult, SitePartialSum, UpdatePackage

sys.path.insert(0, str(Path(__file__).parent))
from test_separation_of_duties import (  # noqa: E402
    PASSPHRASE,
    SHARED,
    Server,
    provisioned_server,
    robot_update,
    robot_vector,
)

SITE_ROBOTS = ('robot_a', 'robot_b')


@dataclasses.dataclass
class Site:
    """site_a's gateway: its enrolled signing identity and its X25519 seal key."""

    signer: Identity
    seal_key: SealedBoxKey


@pytest.fixture()
def plain_server(tmp_path, monkeypatch) -> Server:
    return provisioned_server(tmp_path, monkeypatch)


@pytest.fixture()
def site(plain_server) -> Site:
    signer = Identity.generate('site_a_aggregator', Role.SITE_AGGREGATOR)
    plain_server.aggregator.kms.register_key(signer.key_id, KeyMetadata(
        key_id=signer.key_id, created_at=datetime.now(timezone.utc), owner='fleet', role=Role.SITE_AGGREGATOR,
        public_key=signer.public_key_bytes()))
    return Site(signer, SealedBoxKey())


def site_mode_aggregator(server: Server, site: Site, tmp_path: Path) -> Aggregator:
    """The aggregator restarted with the switch on and site_a = robot_a, robot_b."""
    sites = tmp_path / 'sites.yaml'
    sites.write_text(yaml.safe_dump({'sites': {'site_a': {'signer_key_id': site.signer.key_id,
                                                          'seal_key': site.seal_key.public_key.hex(),
                                                          'robots': list(SITE_ROBOTS)}}}))
    server.aggregator = Aggregator(AggregatorSettings(
        fleet_dir=str(server.paths.root), quorum=2, site_aggregation=True, site_aggregators_file=str(sites),
        **SHARED), PASSPHRASE)
    return server.aggregator


@pytest.fixture()
def server(plain_server, site, tmp_path) -> Server:
    site_mode_aggregator(plain_server, site, tmp_path)
    return plain_server


def collector(server: Server, site: Site) -> SiteCollector:
    return SiteCollector(server.aggregator.current.config, 'site_a', site.seal_key, server.aggregator.kms,
                         site.signer, server.key_service.params)


def site_round(server: Server, site: Site) -> tuple[dict[str, np.ndarray], dict[str, bytes], SiteCollector]:
    """Open a round; robots a and b send to their site's collector, robot c to the aggregator."""
    server.open_round()
    vectors = {robot: robot_vector(server, seed) for seed, robot in enumerate(('robot_a', 'robot_b', 'robot_c'))}
    updates = {robot: robot_update(server, robot, vector) for robot, vector in vectors.items()}
    site_sum = collector(server, site)
    for robot in SITE_ROBOTS:
        site_sum.add(updates[robot])
    server.aggregator.accept(updates['robot_c'])
    return vectors, updates, site_sum


def decoded_result(server: Server, blob: bytes) -> np.ndarray:
    return update_codec.decode_aggregate(server.aggregator.current.codec, AggregateResult.deserialize(blob).aggregate)


def decoded_round(server: Server) -> np.ndarray:
    """The round's one decryption, decoded; the aggregator's candidate() check runs on it too."""
    blob = server.decrypt()
    decoded = decoded_result(server, blob)
    server.aggregator.candidate(blob)
    return decoded


def noise_bound(server: Server, robots: int) -> float:
    """Largest coordinate error an honest sum shows: 8 DP noise std plus rounding (tested below)."""
    codec = server.aggregator.current.codec
    return 8 * codec.skellam.aggregate_stddev(robots) + robots / codec.skellam.scale * 4


def signed_sum(signer: Identity, config, contributions, summed_bodies: bytes, site_id: str = 'site_a') -> bytes:
    """What a (malicious) site gateway can sign: any record it likes under its own identity."""
    return SitePartialSum(site_id=site_id, round_id=config.round_id, config_digest=config.config_digest(),
                          summed_bodies=summed_bodies, contributions=tuple(contributions),
                          signer_key_id=signer.key_id, created_at=time.time()).signed_by(signer).serialize()


def sealed_to_aggregator(config, body: BodyCiphertext, site_id: str = 'site_a') -> bytes:
    return seal(config.aggregator_transport_key, body.to_bytes(),
                site_sum_seal_context(site_id, config.round_id, config.config_digest()))


def test_robots_seal_to_their_site_only_because_the_signed_round_config_says_so(server, site):
    config = server.open_round()
    assert update_codec.body_seal_key(config, 'robot_a') == site.seal_key.public_key
    assert update_codec.body_seal_key(config, 'robot_c') == config.aggregator_transport_key
    # A site robot's update sent straight to the aggregator does not open there: it was sealed to the site.
    with pytest.raises(VerificationError) as refused:
        server.aggregator.accept(robot_update(server, 'robot_a', robot_vector(server, 0)))
    assert refused.value.reason == 'unsealing_failed'


def test_a_round_with_a_site_partial_sum_decodes_to_the_robots_sum(server, site):
    vectors, _, site_sum = site_round(server, site)
    assert site_sum.complete
    record = server.aggregator.accept_site_sum(site_sum.partial_sum())
    assert [c.robot_id for c in record.contributions] == list(SITE_ROBOTS)
    assert sorted(server.aggregator.current.contributors) == ['robot_a', 'robot_b', 'robot_c']
    error = decoded_round(server) - sum(vectors.values())
    assert np.max(np.abs(error)) < noise_bound(server, 3)


def test_the_default_aggregator_refuses_partial_sums(plain_server, site, tmp_path):
    site_mode_aggregator(plain_server, site, tmp_path)
    _, _, site_sum = site_round(plain_server, site)
    partial = site_sum.partial_sum()
    plain_server.restart_aggregator()  # the switch off, as config/fleet.yaml ships it
    assert plain_server.aggregator.current.config.site_aggregators  # the open round still names the site
    with pytest.raises(RoundError) as refused:
        plain_server.aggregator.accept_site_sum(partial)
    assert refused.value.reason == 'site_aggregation_off'
    fresh = plain_server.aggregator
    fresh.close_round({'outcome': 'test'})
    assert fresh.open_round(plain_server.key_service.round_key(fresh.next_round_id())).site_aggregators == ()


def test_a_partial_sum_survives_an_aggregator_restart(server, site, tmp_path):
    vectors, _, site_sum = site_round(server, site)
    server.aggregator.accept_site_sum(site_sum.partial_sum())
    site_mode_aggregator(server, site, tmp_path)
    assert sorted(server.aggregator.current.contributors) == ['robot_a', 'robot_b', 'robot_c']
    assert np.max(np.abs(decoded_round(server) - sum(vectors.values()))) < noise_bound(server, 3)


def test_a_revoked_site_robot_takes_its_whole_site_sum_out(server, site):
    vectors, _, site_sum = site_round(server, site)
    server.aggregator.accept_site_sum(site_sum.partial_sum())
    server.aggregator.kms.revoke_key('robot_b', 'test')
    assert server.aggregator.drop_revoked() == ['robot_b']
    assert server.aggregator.current.contributors == ['robot_c']
    assert not server.aggregator.current.site_sums


@pytest.mark.parametrize('attack, reason', [
    ('robot_twice', 'duplicate_robot'),
    ('robot_of_no_site', 'foreign_robot'),
    ('contribution_of_an_earlier_round', 'replayed_round'),
    ('tampered_header', 'bad_signature'),
    ('unknown_site', 'unknown_site'),
    ('signed_by_a_robot', 'unknown_signer'),
    ('short_sum', 'payload_size_mismatch'),
    ('no_robots', 'quorum_not_met'),
    ('oversized', 'oversized'),
])
def test_malformed_partial_sums_are_refused_and_nothing_is_recorded(server, site, attack, reason):
    _, updates, site_sum = site_round(server, site)
    config = server.aggregator.current.config
    honest = SitePartialSum.deserialize(site_sum.partial_sum())
    contributions = list(honest.contributions)
    summed, signer = honest.summed_bodies, site.signer
    if attack == 'robot_twice':
        contributions = [contributions[0], contributions[0]]
    elif attack == 'robot_of_no_site':
        contributions.append(UpdatePackage.deserialize(updates['robot_c']).contribution())
    elif attack == 'contribution_of_an_earlier_round':
        contributions[1] = dataclasses.replace(contributions[1], round_id=config.round_id - 1)
    elif attack == 'tampered_header':
        contributions[1] = dataclasses.replace(contributions[1], created_at=contributions[1].created_at + 1)
    elif attack == 'short_sum':
        summed = summed[:-1]
    elif attack == 'no_robots':
        contributions = []
    elif attack == 'signed_by_a_robot':
        signer = load_key(server.paths.robot_dir('robot_a') / 'identity.key', PASSPHRASE)
    before = list(server.aggregator.current.contributors)
    blob = signed_sum(signer, config, contributions, summed, 'site_b' if attack == 'unknown_site' else 'site_a')
    if attack == 'oversized':
        blob = b'\x00' * (server.aggregator.current.verifier.max_package_bytes + 1)
    with pytest.raises(VerificationError) as refused:
        server.aggregator.accept_site_sum(blob)
    assert refused.value.reason == reason
    assert server.aggregator.current.contributors == before


def test_a_replayed_partial_sum_is_refused(server, site):
    _, _, site_sum = site_round(server, site)
    partial = site_sum.partial_sum()
    server.aggregator.accept_site_sum(partial)
    with pytest.raises(VerificationError) as again:
        server.aggregator.accept_site_sum(partial)
    assert again.value.reason == 'duplicate_robot'
    server.decrypt()
    server.aggregator.close_round({'outcome': 'test'})
    server.open_round()
    with pytest.raises(VerificationError) as next_round:
        server.aggregator.accept_site_sum(partial)
    assert next_round.value.reason == 'replayed_round'


def test_the_site_collector_takes_only_its_robots_verified_updates(server, site):
    _, updates, site_sum = site_round(server, site)
    with pytest.raises(VerificationError) as foreign:
        site_sum.add(updates['robot_c'])
    assert foreign.value.reason in ('foreign_robot', 'unsealing_failed')
    with pytest.raises(VerificationError) as twice:
        site_sum.add(updates['robot_a'])
    assert twice.value.reason == 'duplicate_robot'
    forged = dataclasses.replace(UpdatePackage.deserialize(updates['robot_b']), created_at=1.0).serialize()
    with pytest.raises(VerificationError) as bad:
        collector(server, site).add(forged)
    assert bad.value.reason == 'bad_signature'
    with pytest.raises(SiteSumError):
        SiteCollector(server.aggregator.current.config, 'site_a', SealedBoxKey(), server.aggregator.kms,
                      site.signer, server.key_service.params)


def trivial_encryption(server: Server, vector: np.ndarray, factor: int) -> BodyCiphertext:
    """Bodies that encrypt `factor` times `vector`'s encoding under the key 0: anyone can make them."""
    codec = server.aggregator.current.codec
    params, ring = codec.secagg, codec.secagg.ring()
    t = params.plaintext_modulus
    encoded = SkellamEncoder(codec.skellam, codec.round_seed).encode(vector).astype(np.int64) * factor % t
    message = np.zeros(codec.body_chunks * params.n, dtype=np.int64)
    message[:encoded.size] = encoded - t * (encoded >= t // 2)
    return BodyCiphertext(params, ring.ntt(ring.from_signed(message.reshape(codec.body_chunks, params.n))))


def shifted_sum(server: Server, site: Site, factor: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A compromised site gateway adds a trivial encryption of `factor` times a 50-coordinate vector of
    norm 1.4 to its honest sum and sends it; every check before decryption passes."""
    vectors, _, site_sum = site_round(server, site)
    config = server.aggregator.current.config
    shift = np.zeros_like(vectors['robot_a'])
    shift[:50] = 0.2
    honest, offset = site_sum.summed_body(), trivial_encryption(server, shift, factor)
    shifted = BodyCiphertext(honest.params, (honest.values + offset.values) % np.uint64(honest.params.q))
    contributions = SitePartialSum.deserialize(site_sum.partial_sum()).contributions
    server.aggregator.accept_site_sum(signed_sum(site.signer, config, contributions,
                                                 sealed_to_aggregator(config, shifted)))
    return vectors, factor * shift


def test_not_caught_a_site_gateway_shifts_its_sites_aggregate_by_a_vector_of_its_choice(server, site):
    """The lattice sum is malleable: adding a trivial encryption of v moves the decrypted aggregate by v.
    The gateway need not clip v (here of norm 7, beyond the clipping norm 2 of one robot); within what
    the round's robots could reach together, the candidate is built from the robots' sum plus v."""
    vectors, shift = shifted_sum(server, site, 5)
    error = decoded_round(server) - sum(vectors.values())
    assert np.max(np.abs(error - shift)) < 5 * noise_bound(server, 4)
    assert np.min(error[:50]) > 0.8


def test_a_shift_beyond_what_the_robots_can_reach_fails_the_round_after_its_decryption(server, site):
    vectors, shift = shifted_sum(server, site, 50)
    with pytest.raises(RoundError) as refused:
        decoded_round(server)
    assert refused.value.reason == 'implausible_aggregate'


def test_a_dropped_body_passes_every_check_and_fails_the_round_after_its_decryption(server, site):
    """Keeping robot b's header and key ciphertext but only robot a's body: accepted and decrypted once;
    the aggregate is noise (K includes k_b, the bodies do not), far beyond what clipped robots reach,
    so the candidate is refused. The round's one decryption is spent and no check names the site."""
    vectors, updates, _ = site_round(server, site)
    config = server.aggregator.current.config
    only_a = collector(server, site)
    only_a.add(updates['robot_a'])
    contributions = [UpdatePackage.deserialize(updates[robot]).contribution() for robot in SITE_ROBOTS]
    server.aggregator.accept_site_sum(signed_sum(site.signer, config, contributions,
                                                 sealed_to_aggregator(config, only_a.summed_body())))
    blob = server.decrypt()
    decoded = decoded_result(server, blob)
    truth = sum(vectors.values())
    assert np.linalg.norm(decoded - truth) > 20 * np.linalg.norm(truth)
    with pytest.raises(RoundError) as refused:
        server.aggregator.candidate(blob)
    assert refused.value.reason == 'implausible_aggregate'
