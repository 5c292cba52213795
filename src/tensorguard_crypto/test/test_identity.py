"""Ed25519 identities: signatures verify, and fail under another key, context or message."""
import pytest

from tensorguard_crypto.identity import (Identity, InvalidPublicKey, Role, SignatureInvalid, fingerprint,
                                         verify_signature)


def test_signature_verifies_with_public_key():
    identity = Identity.generate('robot_1', Role.ROBOT)
    signature = identity.sign(b'UpdatePackage', b'payload')
    verify_signature(identity.public_key_bytes(), b'UpdatePackage', b'payload', signature)
    assert len(signature) == 64 and len(identity.public_key_bytes()) == 32


@pytest.mark.parametrize('context, message', [(b'ModelPackage', b'payload'), (b'UpdatePackage', b'payloaD')])
def test_signature_bound_to_context_and_message(context, message):
    identity = Identity.generate('robot_1')
    signature = identity.sign(b'UpdatePackage', b'payload')
    with pytest.raises(SignatureInvalid):
        verify_signature(identity.public_key_bytes(), context, message, signature)


def test_signature_fails_under_other_key():
    signature = Identity.generate('a').sign(b'ctx', b'm')
    with pytest.raises(SignatureInvalid):
        verify_signature(Identity.generate('b').public_key_bytes(), b'ctx', b'm', signature)


@pytest.mark.parametrize('public_key', [b'', b'\x00' * 31, b'\x00' * 33, 'not-bytes'])
def test_invalid_public_key_rejected(public_key):
    with pytest.raises(InvalidPublicKey):
        verify_signature(public_key, b'ctx', b'm', b'\x00' * 64)


def test_repr_never_shows_private_key():
    identity = Identity.generate('robot_1')
    seed = identity.private_key.private_bytes_raw()
    assert seed.hex() not in repr(identity) and 'private_key' not in repr(identity)
    assert len(fingerprint(identity.public_key_bytes())) == 16
