"""PKCS#11 backend against a private SoftHSM2 token: keys are generated in the token, never leave it,
sign verifiable Ed25519 signatures and seal/unseal the key service's secret."""
import os
import secrets
import sys
import time
from pathlib import Path

import pkcs11
import pytest

from tensorguard_crypto.hsm import (
    EnvelopeError,
    HsmKeyExists,
    HsmKeyNotFound,
    HsmLoginFailed,
    HsmSession,
    HsmTokenNotFound,
    HsmUnavailable,
    HsmUri,
    InvalidHsmUri,
    key_protection,
)
from tensorguard_crypto.identity import Identity, Role, verify_signature
from tensorguard_crypto.verify import PinnedKeys, verify_model_package
from tensorguard_crypto.wire import RoundConfigPackage, model_package

sys.path.insert(0, str(Path(__file__).parent))
from crypto_test_support import make_round_config, softhsm_token  # noqa: E402


@pytest.fixture(scope='module')
def token():
    return softhsm_token()


def _uri(token, key_label: str) -> str:
    return f'hsm://token/{token.label}/{key_label}'


def _slot_of(token) -> int:
    lib = pkcs11.lib(str(token.module))
    return next(slot.slot_id for slot in lib.get_slots(token_present=True) if slot.get_token().label == token.label)


def test_uri_parsing():
    assert HsmUri.parse('hsm://slot/1') == HsmUri(slot=1, token_label=None, key_label='tensorguard')
    assert HsmUri.parse('hsm://token/fleet/server-sign') == HsmUri(None, 'fleet', 'server-sign')
    for bad in ('hsm://slot/x', 'hsm:/slot/1', 'file:///k', 'hsm://token//k', 'hsm://slot/1/a b'):
        with pytest.raises(InvalidHsmUri):
            HsmUri.parse(bad)


def test_signing_key_never_leaves_the_token(token):
    label = f'sign-{secrets.token_hex(3)}'
    with HsmSession(_uri(token, label), pin=token.pin, module_path=str(token.module)) as session:
        signer = session.generate_signer('server', Role.SERVER)
        assert key_protection(signer.private_key) == {
            'sensitive': True, 'extractable': False, 'always_sensitive': True, 'never_extractable': True}
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            signer.private_key[pkcs11.Attribute.VALUE]
        signature = signer.sign(b'ModelPackage', b'payload')
        verify_signature(signer.public_key_bytes(), b'ModelPackage', b'payload', signature)
        model = model_package(2, 1, 5, os.urandom(256), 'deploy', 'server', time.time()).signed_by(signer)
        pinned = PinnedKeys({'server': (Role.SERVER, signer.public_key_bytes())})
        assert verify_model_package(model.serialize(), pinned).model_version == 2
        with pytest.raises(HsmKeyExists):
            session.generate_signer('server', Role.SERVER)


def test_key_persists_in_token_and_is_found_by_slot(token):
    label = f'round-{secrets.token_hex(3)}'
    with HsmSession(_uri(token, label), pin=token.pin) as session:
        public_key = session.generate_signer('server', Role.SERVER).public_key_bytes()
    with HsmSession(f'hsm://slot/{_slot_of(token)}/{label}', pin=token.pin) as session:
        signer = session.signer('server', Role.SERVER)
        assert signer.public_key_bytes() == public_key
        config = make_round_config(signer)
        RoundConfigPackage.deserialize(config.serialize()).verify_signature(public_key)


def test_envelope_seals_lattice_secret_under_token_key(token):
    label = f'env-{secrets.token_hex(3)}'
    secret = os.urandom(4096)
    with HsmSession(_uri(token, label), pin=token.pin) as session:
        envelope = session.generate_envelope_key()
        assert key_protection(envelope.key)['extractable'] is False
        assert key_protection(envelope.key)['sensitive'] is True
        blob = envelope.seal(secret, b'key_service/round-7')
        assert secret not in blob and len(blob) == len(secret) + 6 + 12 + 16
    with HsmSession(_uri(token, label), pin=token.pin) as session:
        envelope = session.envelope()
        assert envelope.unseal(blob, b'key_service/round-7') == secret
        with pytest.raises(EnvelopeError):
            envelope.unseal(blob, b'key_service/round-8')
        tampered = bytearray(blob)
        tampered[40] ^= 1
        with pytest.raises(EnvelopeError):
            envelope.unseal(bytes(tampered), b'key_service/round-7')
        with pytest.raises(EnvelopeError):
            envelope.unseal(blob[:20], b'key_service/round-7')


def test_clear_errors(token, tmp_path):
    with pytest.raises(HsmLoginFailed) as info:
        HsmSession(_uri(token, 'x'), pin='0' * 16)
    assert '0' * 16 not in str(info.value) and token.pin not in str(info.value)
    with pytest.raises(HsmTokenNotFound):
        HsmSession('hsm://token/no-such-token/x', pin=token.pin)
    with pytest.raises(HsmUnavailable):
        HsmSession(_uri(token, 'x'), pin=token.pin, module_path=str(tmp_path / 'missing.so'))
    with HsmSession(_uri(token, 'absent-key'), pin=token.pin) as session:
        with pytest.raises(HsmKeyNotFound):
            session.signer('server', Role.SERVER)
        with pytest.raises(HsmKeyNotFound):
            session.envelope()


def test_hsm_and_software_signers_interchangeable(token):
    label = f'agg-{secrets.token_hex(3)}'
    with HsmSession(_uri(token, label), pin=token.pin) as session:
        hsm_signer = session.generate_signer('aggregator', Role.AGGREGATOR)
        software = Identity.generate('aggregator', Role.AGGREGATOR)
        for signer in (hsm_signer, software):
            signature = signer.sign(b'ctx', b'm')
            verify_signature(signer.public_key_bytes(), b'ctx', b'm', signature)
