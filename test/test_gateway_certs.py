"""`tensorguard fleet gateway-cert`: the fleet's gateway CA is made on first use and kept with the fleet keys
(0600, key sealed under the fleet passphrase), certificates chain to it and name their holder, nothing is
overwritten or printed that is secret, and a loosened, replaced or foreign CA file is refused."""
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tensorguard_crypto import cli
from tensorguard_crypto.fleet import FleetPaths, provision_server

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
