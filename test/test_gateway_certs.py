"""`tensorguard fleet gateway-cert`: the fleet's gateway CA is made on first use and kept with the fleet keys
(0600, key sealed under the fleet passphrase), certificates chain to it and name their holder, nothing is
overwritten or printed that is secret, and a loosened, replaced or foreign CA file is refused.
`tensorguard fleet site-aggregator-key`: a site gateway's identity and seal key, sealed like the fleet's keys,
registered in the KMS and listed where the aggregator reads its sites; nothing replaced, bad requests refused."""
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tensorguard_aggregator.rounds import load_site_aggregators
from tensorguard_crypto import cli, keystore, site_keys
from tensorguard_crypto.fleet import FleetPaths, enroll_robot, provision_server
from tensorguard_crypto.identity import Role
from tensorguard_crypto.kms import UnknownKey

PASSPHRASE = 'gateway-test-passphrase'


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', PASSPHRASE)
    paths = FleetPaths(tmp_path / 'fleet')
    provision_server(paths, PASSPHRASE.encode())
    return paths


def issue(paths, *args):
    return cli.main(['fleet', 'gateway-cert', str(paths.root), *args])


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path):
    return stat.S_IMODE(path.lstat().st_mode)


def test_site_and_router_certificates_chain_to_the_fleet_ca_kept_with_the_fleet_keys(fleet, tmp_path, capsys):
    out = tmp_path / 'out'
    assert issue(fleet, '--site', 'site_a', '--out', str(out)) == 0
    assert issue(fleet, '--router', '--host', 'localhost', '--host', '127.0.0.1', '--out', str(out)) == 0
    printed = capsys.readouterr().out
    ca_dir = fleet.server / 'gateway_ca'
    assert {p.name for p in ca_dir.iterdir()} == {'ca.crt', 'ca.key'}
    assert {mode(p) for p in [*ca_dir.iterdir(), *out.iterdir()]} == {0o600}
    assert b'PRIVATE KEY' not in (ca_dir / 'ca.key').read_bytes()  # sealed, not a PEM key
    assert 'PRIVATE KEY' not in printed and (out / 'site_site_a.key').read_text() not in printed
    ca = load(ca_dir / 'ca.crt')
    assert load(out / 'ca.crt') == ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    site, router = load(out / 'site_site_a.crt'), load(out / 'router.crt')
    for certificate in (site, router):
        certificate.verify_directly_issued_by(ca)
    assert site.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == 'site:site_a'
    assert list(site.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert list(router.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    names = router.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ['localhost']
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ['127.0.0.1']
    assert isinstance(site.public_key(), ec.EllipticCurvePublicKey)
    assert site.public_key() != router.public_key()
    # A second certificate of the same fleet reuses the CA.
    assert issue(fleet, '--server', '--out', str(out)) == 0
    load(out / 'fleet-server.crt').verify_directly_issued_by(ca)


def test_nothing_is_overwritten_and_bad_requests_are_refused_with_their_exit_codes(fleet, tmp_path, capsys):
    out = tmp_path / 'out'
    assert issue(fleet, '--site', 'site_a', '--out', str(out)) == 0
    before = (out / 'site_site_a.key').read_bytes()
    assert issue(fleet, '--site', 'site_a', '--out', str(out)) == cli.EXIT_KEY_FILE
    assert (out / 'site_site_a.key').read_bytes() == before
    assert issue(fleet, '--site', 'fleet', '--out', str(out)) == cli.EXIT_KEY_FILE
    assert issue(FleetPaths(tmp_path / 'nowhere'), '--server', '--out', str(out)) == cli.EXIT_FLEET
    with pytest.raises(SystemExit) as usage:
        issue(fleet, '--site', 'site_b', '--server', '--out', str(out))
    assert usage.value.code == cli.EXIT_USAGE
    os.environ['TENSORGUARD_KEY_PASSPHRASE'] = 'not-the-fleet-passphrase'
    assert issue(fleet, '--site', 'site_b', '--out', str(out)) == cli.EXIT_KEY_FILE
    errors = capsys.readouterr().err
    assert 'already exists' in errors and 'reserved' in errors and 'wrong passphrase' in errors
    assert not (out / 'site_site_b.crt').exists()


def test_a_loosened_or_replaced_ca_file_and_another_fleets_ca_are_refused(fleet, tmp_path, capsys):
    assert issue(fleet, '--site', 'site_a', '--out', str(tmp_path / 'a')) == 0
    ca_key = fleet.server / 'gateway_ca' / 'ca.key'
    ca_key.chmod(0o644)
    assert issue(fleet, '--site', 'site_b', '--out', str(tmp_path / 'b')) == cli.EXIT_KEY_FILE
    assert 'too open' in capsys.readouterr().err
    ca_key.chmod(0o600)
    ca_cert = fleet.server / 'gateway_ca' / 'ca.crt'
    (tmp_path / 'elsewhere.crt').write_bytes(ca_cert.read_bytes())
    (tmp_path / 'elsewhere.crt').chmod(0o600)
    ca_cert.unlink()
    ca_cert.symlink_to(tmp_path / 'elsewhere.crt')
    assert issue(fleet, '--site', 'site_b', '--out', str(tmp_path / 'b')) == cli.EXIT_KEY_FILE
    assert 'cannot open gateway CA certificate (Too many levels of symbolic links)' in capsys.readouterr().err
    other = FleetPaths(tmp_path / 'other')
    provision_server(other, PASSPHRASE.encode())
    assert issue(other, '--site', 'site_c', '--out', str(tmp_path / 'a')) == cli.EXIT_KEY_FILE
    assert "another CA certificate than this fleet's" in capsys.readouterr().err


# `tensorguard fleet site-aggregator-key`: a site gateway's aggregator identity and seal key ------------------------

def site_key(paths, *args):
    return cli.main(['fleet', 'site-aggregator-key', str(paths.root), *args])


@pytest.fixture
def robots_fleet(fleet):
    for robot in ('robot_1', 'robot_2', 'robot_3'):
        enroll_robot(fleet, robot, PASSPHRASE.encode())
    return fleet


def test_a_site_aggregator_key_is_sealed_registered_and_listed_where_the_aggregator_reads_its_sites(
        robots_fleet, tmp_path, capsys):
    out = tmp_path / 'site_a'
    assert site_key(robots_fleet, '--site', 'site_a', '--robot', 'robot_1', '--robot', 'robot_2',
                    '--out', str(out)) == 0
    printed = capsys.readouterr().out
    files = {p.name for p in out.iterdir()}
    assert files == {'site_a_aggregator.key', 'site_a_seal.key', 'site_a_trust.json'}
    assert {mode(p) for p in out.iterdir()} == {0o600}
    keys = site_keys.load_site_aggregator('site_a', out / 'site_a_aggregator.key', out / 'site_a_seal.key',
                                          out / 'site_a_trust.json', PASSPHRASE.encode())
    assert keys.signer.key_id == 'site_a_aggregator' and keys.signer.role is Role.SITE_AGGREGATOR
    assert keys.seal_key.secret_bytes() not in (out / 'site_a_seal.key').read_bytes()  # sealed, not raw
    assert keys.seal_key.secret_bytes().hex() not in printed and 'PRIVATE' not in printed
    kms = robots_fleet.kms()
    assert kms.public_key_for('site_a_aggregator', Role.SITE_AGGREGATOR) == keys.signer.public_key_bytes()
    assert keys.trust.public_key_for('robot_2', Role.ROBOT) == kms.public_key_for('robot_2', Role.ROBOT)
    assert keys.trust.public_key_for('aggregator', Role.AGGREGATOR) == kms.public_key_for('aggregator')
    with pytest.raises(UnknownKey):
        keys.trust.public_key_for('robot_3')  # not one of the site's robots
    sites_file = robots_fleet.server / 'site_aggregators.json'
    (entry,) = load_site_aggregators(str(sites_file))  # exactly as the aggregator reads site_aggregators_file
    assert (entry.site_id, entry.signer_key_id, entry.robots) == ('site_a', 'site_a_aggregator', ('robot_1', 'robot_2'))
    assert entry.seal_key == keys.seal_key.public_key
    assert str(sites_file) in printed
    # A second site is added next to the first.
    assert site_key(robots_fleet, '--site', 'site_b', '--robot', 'robot_3', '--out', str(tmp_path / 'b')) == 0
    assert [e.site_id for e in load_site_aggregators(str(sites_file))] == ['site_a', 'site_b']


def test_site_aggregator_keys_are_never_replaced_and_bad_requests_are_refused(robots_fleet, tmp_path, capsys):
    out, sites_file = tmp_path / 'site_a', robots_fleet.server / 'site_aggregators.json'
    assert site_key(robots_fleet, '--site', 'site_a', '--robot', 'robot_1', '--out', str(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}, sites_file.read_bytes()
    capsys.readouterr()
    refusals = [  # (arguments, exit code, what the error says)
        (['--site', 'site_a', '--robot', 'robot_1', '--out', str(out)], cli.EXIT_FLEET, 'already registered'),
        (['--site', 'site_b', '--robot', 'robot_1', '--out', str(tmp_path / 'b')], cli.EXIT_FLEET,
         "already summed by site 'site_a'"),
        (['--site', 'site_b', '--robot', 'robot_9', '--out', str(tmp_path / 'b')], cli.EXIT_FLEET,
         "'robot_9' is not an active robot"),
        (['--site', 'site_b', '--robot', 'aggregator', '--out', str(tmp_path / 'b')], cli.EXIT_FLEET,
         "'aggregator' is not an active robot"),
        (['--site', 'site_b', '--robot', 'robot_2', '--robot', 'robot_2', '--out', str(tmp_path / 'b')],
         cli.EXIT_FLEET, 'given twice'),
        (['--site', 'fleet', '--robot', 'robot_2', '--out', str(tmp_path / 'b')], cli.EXIT_FLEET, 'reserved'),
    ]
    for arguments, code, message in refusals:
        assert site_key(robots_fleet, *arguments) == code, arguments
        assert message in capsys.readouterr().err, arguments
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c' / 'site_c_seal.key').write_bytes(b'')
    assert site_key(robots_fleet, '--site', 'site_c', '--robot', 'robot_2', '--out', str(tmp_path / 'c')) == \
        cli.EXIT_KEY_FILE
    assert 'refusing to overwrite' in capsys.readouterr().err
    os.environ['TENSORGUARD_KEY_PASSPHRASE'] = 'not-the-fleet-passphrase'
    assert site_key(robots_fleet, '--site', 'site_d', '--robot', 'robot_2', '--out', str(tmp_path / 'd')) == \
        cli.EXIT_KEY_FILE
    assert 'wrong passphrase' in capsys.readouterr().err
    assert site_key(FleetPaths(tmp_path / 'nowhere'), '--site', 'site_e', '--robot', 'robot_2', '--out',
                    str(tmp_path / 'e')) == cli.EXIT_FLEET
    assert not (tmp_path / 'b').exists() and not (tmp_path / 'd').exists() and not (tmp_path / 'e').exists()
    assert [p.name for p in (tmp_path / 'c').iterdir()] == ['site_c_seal.key']
    assert before == ({p.name: p.read_bytes() for p in out.iterdir()}, sites_file.read_bytes())
    assert {r.metadata.key_id for r in robots_fleet.kms().list_keys()
            if r.metadata.role is Role.SITE_AGGREGATOR} == {'site_a_aggregator'}
    # The gateway's loader refuses the wrong passphrase, a loosened file and another site's identity.
    with pytest.raises(keystore.WrongPassphrase):
        site_keys.load_site_aggregator('site_a', out / 'site_a_aggregator.key', out / 'site_a_seal.key',
                                       out / 'site_a_trust.json', b'not-the-fleet-passphrase')
    with pytest.raises(site_keys.SiteAggregatorError, match='not the site aggregator identity'):
        site_keys.load_site_aggregator('site_b', out / 'site_a_aggregator.key', out / 'site_a_seal.key',
                                       out / 'site_a_trust.json', PASSPHRASE.encode())
    (out / 'site_a_seal.key').chmod(0o644)
    with pytest.raises(keystore.LoosePermissions):
        site_keys.load_site_aggregator('site_a', out / 'site_a_aggregator.key', out / 'site_a_seal.key',
                                       out / 'site_a_trust.json', PASSPHRASE.encode())
