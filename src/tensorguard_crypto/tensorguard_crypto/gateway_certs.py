"""The fleet's gateway CA and the X.509 certificates of its Zenoh gateways and router (ROS-free).

Site gateways, the fleet server's gateway and the fleet router authenticate each other with mutual
TLS (docs/gateway.md). The CA that signs their certificates is the fleet's own, kept with the
fleet's keys and created on first use:

    server/gateway_ca/ca.crt    self-signed CA certificate (ECDSA P-256), mode 0600
    server/gateway_ca/ca.key    its private key (PKCS#8 DER), sealed under the fleet passphrase
                                (keystore.seal_secret: scrypt + AES-256-GCM, mode 0600)

Both are read with the keystore's checks (regular file, not a symlink, owned by the user, no
group/other bits). An issued certificate names its holder in the common name, which the router's
access control matches (``site:<id>``, ``fleet-server``, ``router``), and goes to a directory of
its own as ``<name>.crt``, ``<name>.key`` (unencrypted PKCS#8 PEM, because the Zenoh TLS link
reads it from a file; mode 0600) and ``ca.crt``; nothing is ever overwritten and no private key is
ever printed or logged.
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import keystore
from .fleet import FleetPaths, require_provisioned
from .identity import check_id

CA_DIR = 'gateway_ca'
CA_CERT = 'ca.crt'
CA_KEY = 'ca.key'
CA_KEY_CONTEXT = b'tensorguard gateway CA key v1'
CA_DAYS = 3650
MAX_PEM_BYTES = 64 * 1024
SERVER_NAME = 'fleet-server'
ROUTER_NAME = 'router'
RESERVED_SITE_ID = 'fleet'  # the key scheme's name for what the fleet server publishes (docs/gateway.md)


class GatewayCertError(keystore.KeyStoreError):
    """A gateway certificate cannot be issued as asked (an existing file, a bad host name, a foreign CA file)."""

    reason = 'gateway_cert_error'


@dataclass(frozen=True)
class IssuedCertificate:
    """Where an issued certificate, its key and the CA certificate were written, and their fingerprints."""

    common_name: str
    certificate: Path
    private_key: Path
    ca_certificate: Path
    fingerprint: str
    ca_fingerprint: str


def site_common_name(site_id: str) -> str:
    """The certificate common name of a site's gateway (the router's ACL subject for that site)."""
    if check_id(site_id, 'site id') == RESERVED_SITE_ID:
        raise GatewayCertError(f'site id {RESERVED_SITE_ID!r} is reserved for what the fleet server publishes')
    return f'site:{site_id}'


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex, for the operator to compare out of band."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'TensorGuard fleet'),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_paths(paths: FleetPaths) -> tuple[Path, Path]:
    directory = paths.server / CA_DIR
    return directory / CA_CERT, directory / CA_KEY


def load_or_create_ca(paths: FleetPaths, passphrase: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The fleet's gateway CA, created (certificate and sealed key, 0600) the first time it is needed."""
    require_provisioned(paths)
    cert_path, key_path = _ca_paths(paths)
    if not (cert_path.exists() or cert_path.is_symlink() or key_path.exists() or key_path.is_symlink()):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = _name(f'TensorGuard gateway CA ({paths.root.resolve().name})')
        certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5))
                       .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                       .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                       .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                      critical=True)
                       .sign(key, hashes.SHA256()))
        keystore.seal_secret(key_path, key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()), passphrase, CA_KEY_CONTEXT)
        keystore.write_private_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM),
                                    'gateway CA certificate')
    certificate = _load_certificate(cert_path, 'gateway CA certificate')
    key = serialization.load_der_private_key(keystore.unseal_secret(key_path, passphrase, CA_KEY_CONTEXT), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
        raise GatewayCertError(f'{key_path}: the sealed key does not belong to {cert_path}')
    return certificate, key


def _load_certificate(path: Path, what: str) -> x509.Certificate:
    data = keystore.read_private_file(path, what, MAX_PEM_BYTES)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise keystore.KeyFileCorrupt(f'{path}: not a PEM certificate') from None


def _subject_alternative_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c.isspace() or c in '/*:' for c in host):
                raise GatewayCertError(f'{host!r} is neither an IP address nor a DNS name') from None
            names.append(x509.DNSName(host))
    return names


def issue_certificate(paths: FleetPaths, passphrase: bytes, common_name: str, out_dir: Path,
                      hosts: list[str] | None = None, days: int = 365) -> IssuedCertificate:
    """Sign a new key pair for `common_name` with the fleet's gateway CA and write it to `out_dir` (module
    docstring); `hosts` (DNS names or IPs) go into the subject alternative names a client checks on connect."""
    if not 1 <= days <= CA_DAYS:
        raise GatewayCertError(f'days={days}: a gateway certificate is valid for 1 to {CA_DAYS} days')
    stem = common_name.replace(':', '_')
    cert_path, key_path, ca_path = out_dir / f'{stem}.crt', out_dir / f'{stem}.key', out_dir / CA_CERT
    for path in (cert_path, key_path):
        if path.exists() or path.is_symlink():
            raise GatewayCertError(f'{path}: already exists; refusing to overwrite a gateway certificate or key')
    alternative_names = _subject_alternative_names(list(hosts or []))
    ca_certificate, ca_key = load_or_create_ca(paths, passphrase)
    ca_pem = ca_certificate.public_bytes(serialization.Encoding.PEM)
    if (ca_path.exists() or ca_path.is_symlink()) and keystore.read_private_file(
            ca_path, 'CA certificate', MAX_PEM_BYTES) != ca_pem:
        raise GatewayCertError(f"{ca_path}: holds another CA certificate than this fleet's; choose another directory")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if common_name == ROUTER_NAME else [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_certificate.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(min(now + datetime.timedelta(days=days), ca_certificate.not_valid_after_utc))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
    if alternative_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    keystore.write_private_file(key_path, key_pem, 'gateway private key')
    keystore.write_private_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 'gateway certificate')
    if not ca_path.exists():
        keystore.write_private_file(ca_path, ca_pem, 'CA certificate')
    return IssuedCertificate(common_name, cert_path, key_path, ca_path, fingerprint(certificate),
                             fingerprint(ca_certificate))
