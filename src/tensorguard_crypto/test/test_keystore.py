"""Key files at rest: encrypted, mode 0600, clear errors, and never any key bytes in logs or messages."""
import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from tensorguard_crypto.identity import InvalidId, Role
from tensorguard_crypto.keystore import (
    PASSPHRASE_ENV,
    SCRYPT_COST_ENV,
    InvalidKeyFileId,
    KeyFileCorrupt,
    KeyFileExists,
    KeyFileNotFound,
    KeyPathInvalid,
    KeyStoreError,
    LoosePermissions,
    MissingPassphrase,
    UnsupportedSecurityLevel,
    WrongPassphrase,
    destroy_secret,
    generate_key,
    load_key,
    new_file_cost,
    read_key_info,
    seal_secret,
    unseal_secret,
)

PASSPHRASE = 'correct horse battery staple'
FAST = 15  # scrypt log2 N for tests; the default (17) is exercised once below


def test_round_trip_default_cost_and_mode(tmp_path, monkeypatch):
    monkeypatch.delenv(SCRYPT_COST_ENV, raising=False)
    path = tmp_path / 'keys' / 'robot_1.key'
    identity = generate_key(path, security_level=128, passphrase=PASSPHRASE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key(path, PASSPHRASE)
    assert loaded.key_id == 'robot_1' and loaded.role is Role.ROBOT
    assert loaded.public_key_bytes() == identity.public_key_bytes()
    info = read_key_info(path)
    assert info.public_key == identity.public_key_bytes() and info.scrypt_log2_n == 17


def test_the_cost_variable_sets_new_key_files_and_sealed_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv(SCRYPT_COST_ENV, '16')
    generate_key(tmp_path / 'k.key', passphrase=PASSPHRASE)
    seal_secret(tmp_path / 's.sealed', SECRET, PASSPHRASE, b'ctx')
    assert read_key_info(tmp_path / 'k.key').scrypt_log2_n == 16 and (tmp_path / 's.sealed').read_bytes()[7] == 16
    assert unseal_secret(tmp_path / 's.sealed', PASSPHRASE, b'ctx') == SECRET
    generate_key(tmp_path / 'named.key', passphrase=PASSPHRASE, scrypt_log2_n=FAST)  # a named cost wins
    assert read_key_info(tmp_path / 'named.key').scrypt_log2_n == FAST


@pytest.mark.parametrize('value', ['14', '23', 'seventeen', ''])
def test_a_cost_variable_outside_the_accepted_range_is_refused_by_name(tmp_path, monkeypatch, value):
    monkeypatch.setenv(SCRYPT_COST_ENV, value)
    with pytest.raises(KeyStoreError, match=SCRYPT_COST_ENV):
        new_file_cost()
    with pytest.raises(KeyStoreError, match=SCRYPT_COST_ENV):
        seal_secret(tmp_path / 's.sealed', SECRET, PASSPHRASE, b'ctx')
    assert not (tmp_path / 's.sealed').exists()


def test_private_key_is_not_in_the_file_in_clear(tmp_path):
    path = tmp_path / 'k.key'
    identity = generate_key(path, passphrase=PASSPHRASE, scrypt_log2_n=FAST)
    seed = identity.private_key.private_bytes_raw()
    assert seed not in path.read_bytes()


def test_passphrase_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    path = tmp_path / 'env.key'
    identity = generate_key(path, key_id='aggregator', role=Role.AGGREGATOR, scrypt_log2_n=FAST)
    loaded = load_key(path)
    assert loaded.key_id == 'aggregator' and loaded.role is Role.AGGREGATOR
    assert loaded.public_key_bytes() == identity.public_key_bytes()


def test_missing_or_short_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with pytest.raises(MissingPassphrase, match=PASSPHRASE_ENV):
        generate_key(tmp_path / 'a.key', scrypt_log2_n=FAST)
    with pytest.raises(MissingPassphrase):
        generate_key(tmp_path / 'a.key', passphrase='short', scrypt_log2_n=FAST)


def test_wrong_passphrase(tmp_path):
    path = tmp_path / 'k.key'
    generate_key(path, passphrase=PASSPHRASE, scrypt_log2_n=FAST)
    with pytest.raises(WrongPassphrase, match='wrong passphrase'):
        load_key(path, 'not the passphrase')


@pytest.mark.parametrize('cut', [0, 5, 40, 100, -1])
def test_truncated_file(tmp_path, cut):
    path = tmp_path / 'k.key'
    generate_key(path, passphrase=PASSPHRASE, scrypt_log2_n=FAST)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data + b'\x00')
    with pytest.raises(KeyFileCorrupt, match='truncated or corrupt'):
        load_key(path, PASSPHRASE)


def test_edited_header_fails_authentication(tmp_path):
    path = tmp_path / 'k.key'
    generate_key(path, passphrase=PASSPHRASE, scrypt_log2_n=FAST)
    data = bytearray(path.read_bytes())
    data[-60] ^= 1  # inside the stored public key (authenticated as associated data)
    path.write_bytes(bytes(data))
    with pytest.raises(WrongPassphrase):
        load_key(path, PASSPHRASE)


def test_weakened_kdf_cost_is_refused(tmp_path):
    path = tmp_path / 'robot.key'
    generate_key(path, passphrase=PASSPHRASE, scrypt_log2_n=FAST)
    data = bytearray(path.read_bytes())
    data[6 + 3 + len('robot')] = 10  # log2 N byte
    path.write_bytes(bytes(data))
    with pytest.raises(KeyFileCorrupt, match='scrypt'):
        load_key(path, PASSPHRASE)


@pytest.mark.parametrize('mode', [0o644, 0o640, 0o604, 0o660, 0o700])
def test_loose_permissions_refused(tmp_path, mode):
    path = tmp_path / 'k.key'
    generate_key(path, passphrase=PASSPHRASE, scrypt_log2_n=FAST)
    os.chmod(path, mode)
    expected = LoosePermissions if mode & 0o077 else None
    if expected is None:
        assert load_key(path, PASSPHRASE)
    else:
        with pytest.raises(LoosePermissions, match='chmod 600'):
            load_key(path, PASSPHRASE)


def test_no_overwrite_missing_file_and_security_level(tmp_path):
    path = tmp_path / 'k.key'
    generate_key(path, passphrase=PASSPHRASE, scrypt_log2_n=FAST)
    with pytest.raises(KeyFileExists):
        generate_key(path, passphrase=PASSPHRASE, scrypt_log2_n=FAST)
    with pytest.raises(KeyFileNotFound):
        load_key(tmp_path / 'absent.key', PASSPHRASE)
    with pytest.raises(KeyStoreError, match='key_id'):
        generate_key(tmp_path / 'c.key', passphrase=PASSPHRASE, key_id='bad id', scrypt_log2_n=FAST)
    with pytest.raises(UnsupportedSecurityLevel, match='128-bit'):
        generate_key(tmp_path / 'b.key', security_level=192, passphrase=PASSPHRASE)
    os.symlink(path, tmp_path / 'link.key')
    with pytest.raises(KeyStoreError):
        load_key(tmp_path / 'link.key', PASSPHRASE)


def test_no_key_bytes_in_logs_or_exception_messages(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / 'secret.key'
    identity = generate_key(path, passphrase=PASSPHRASE, scrypt_log2_n=FAST)
    messages = []
    load_key(path, PASSPHRASE)
    for action in (lambda: load_key(path, 'wrong passphrase!'),
                   lambda: generate_key(path, passphrase=PASSPHRASE),
                   lambda: (os.chmod(path, 0o644), load_key(path, PASSPHRASE)),
                   lambda: (os.chmod(path, 0o600), path.write_bytes(path.read_bytes()[:-3]),
                            load_key(path, PASSPHRASE))):
        with pytest.raises(KeyStoreError) as info:
            action()
        messages += [str(info.value), repr(info.value), repr(info.value.__cause__), repr(info.value.__context__)]
    haystack = '\n'.join(messages + [record.getMessage() for record in caplog.records] + [repr(identity)])
    assert caplog.records, 'generation and loading are logged'
    seed = identity.private_key.private_bytes_raw()
    for needle in (seed.hex(), seed.hex().upper(), base64.b64encode(seed).decode(),
                   base64.urlsafe_b64encode(seed).decode().rstrip('='), repr(seed)[2:-1], PASSPHRASE):
        assert needle not in haystack
    assert seed not in haystack.encode('utf-8', 'surrogateescape')


# --- Review issue 10: ids in key files, unusable key paths ---

@pytest.mark.parametrize('bad', ['../x', 'a/b', 'Robot', '.', '', 'r' * 64])
def test_generate_refuses_ids_outside_the_grammar(tmp_path, bad):
    with pytest.raises(InvalidKeyFileId) as info:
        generate_key(tmp_path / 'k.key', passphrase=PASSPHRASE, key_id=bad, scrypt_log2_n=FAST)
    assert isinstance(info.value, InvalidId) and info.value.reason == 'invalid_id'
    assert list(tmp_path.iterdir()) == []


def test_key_file_whose_header_names_a_path_like_id_is_refused(tmp_path):
    """An edited header is normally caught by AES-GCM at load time; the public header alone (read by
    `tensorguard kms register --key-file`) must not hand a path-like id to the caller either."""
    path = tmp_path / 'k.key'
    generate_key(path, passphrase=PASSPHRASE, key_id='robot_x', scrypt_log2_n=FAST)
    path.write_bytes(path.read_bytes().replace(b'robot_x', b'../x/..', 1))
    with pytest.raises(InvalidKeyFileId, match='key id'):
        read_key_info(path)
    with pytest.raises(InvalidKeyFileId):
        load_key(path, PASSPHRASE)


def test_directory_fifo_or_path_under_a_file_is_not_a_key_file(tmp_path):
    directory = tmp_path / 'dir.key'
    directory.mkdir(mode=0o700)
    os.mkfifo(tmp_path / 'fifo.key', 0o600)
    regular = tmp_path / 'regular'
    regular.write_text('x')
    for path in (directory, tmp_path / 'fifo.key', regular / 'k.key'):
        for action in (lambda path=path: load_key(path, PASSPHRASE), lambda path=path: read_key_info(path)):
            with pytest.raises(KeyPathInvalid) as info:
                action()
            assert info.value.reason == 'key_path_invalid' and str(path) in str(info.value)


@pytest.mark.parametrize('where', ['regular/k.key', 'regular/sub/k.key', 'dir'])
def test_keygen_where_no_key_file_can_be_created(tmp_path, where):
    (tmp_path / 'regular').write_text('x')
    (tmp_path / 'dir').mkdir()
    with pytest.raises(KeyPathInvalid, match='regular is not a directory|is a directory'):
        generate_key(tmp_path / where, passphrase=PASSPHRASE, key_id='robot_1', scrypt_log2_n=FAST)


# --- Sealed secrets: the key-file construction and checks, with a context (a round's lattice or transport secret) ---

SECRET = bytes(range(256)) * 4


def _independent_seal(secret: bytes, passphrase: bytes, context: bytes, log2_n: int = FAST) -> bytes:
    """The documented layout built with `cryptography` directly, not with the code under test."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    salt, nonce = os.urandom(16), os.urandom(12)
    header = b'TGSEAL1' + bytes([log2_n]) + salt + nonce
    key = Scrypt(salt=salt, length=32, n=2 ** log2_n, r=8, p=1).derive(passphrase)
    return header + AESGCM(key).encrypt(nonce, secret, header + context)


def test_sealed_secret_round_trip_mode_context_and_layout(tmp_path, monkeypatch):
    monkeypatch.delenv(SCRYPT_COST_ENV, raising=False)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    path = tmp_path / 'rounds' / '3' / 'secret.sealed'
    seal_secret(path, SECRET, PASSPHRASE, b'key_service/round/3')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert unseal_secret(path, PASSPHRASE, b'key_service/round/3') == SECRET
    data = path.read_bytes()
    assert SECRET not in data and data[:7] == b'TGSEAL1' and data[7] == 17
    key = Scrypt(salt=data[8:24], length=32, n=2 ** 17, r=8, p=1).derive(PASSPHRASE.encode())
    assert AESGCM(key).decrypt(data[24:36], data[36:], data[:36] + b'key_service/round/3') == SECRET
    other = tmp_path / 'independent.sealed'
    other.write_bytes(_independent_seal(SECRET, PASSPHRASE.encode(), b'ctx'))
    other.chmod(0o600)
    assert unseal_secret(other, PASSPHRASE, b'ctx') == SECRET


def test_sealed_secret_refusals(tmp_path):
    path = tmp_path / 'transport.sealed'
    path.write_bytes(_independent_seal(SECRET, PASSPHRASE.encode(), b'round/1'))
    path.chmod(0o600)
    with pytest.raises(WrongPassphrase, match='wrong passphrase'):
        unseal_secret(path, PASSPHRASE, b'round/2')
    with pytest.raises(WrongPassphrase):
        unseal_secret(path, 'not the passphrase', b'round/1')
    original = path.read_bytes()
    for position in (len(original) - 1, 40, 10):  # tag, ciphertext, salt: all authenticated
        edited = bytearray(original)
        edited[position] ^= 1
        path.write_bytes(bytes(edited))
        with pytest.raises(WrongPassphrase, match='modified'):
            unseal_secret(path, PASSPHRASE, b'round/1')
    for garbage, match in ((original[:40], 'truncated or corrupt'), (b'TGKEY\x00' + original[6:], 'not a sealed'),
                           (original[:7] + bytes([40]) + original[8:], 'scrypt'),
                           (original[:7] + bytes([10]) + original[8:], 'scrypt')):
        path.write_bytes(garbage)
        with pytest.raises(KeyFileCorrupt, match=match):
            unseal_secret(path, PASSPHRASE, b'round/1')
    path.write_bytes(original)
    path.chmod(0o640)
    with pytest.raises(LoosePermissions, match='chmod 600'):
        unseal_secret(path, PASSPHRASE, b'round/1')
    path.chmod(0o600)
    with pytest.raises(KeyFileExists, match='sealed secret'):
        seal_secret(path, b'other', PASSPHRASE, b'round/1')
    assert path.read_bytes() == original
    os.symlink(path, tmp_path / 'link.sealed')
    with pytest.raises(KeyStoreError):
        unseal_secret(tmp_path / 'link.sealed', PASSPHRASE, b'round/1')
    with pytest.raises(KeyFileNotFound):
        unseal_secret(tmp_path / 'absent.sealed', PASSPHRASE, b'round/1')


def test_storage_errors_are_also_os_errors():
    """The aggregator counts storage failures (`OSError`) as `storage_error`; a sealed secret that cannot
    be written stays one of them. /proc accepts no new file, even from root."""
    with pytest.raises(OSError) as info:
        seal_secret(Path('/proc/self/secret.sealed'), SECRET, PASSPHRASE, b'c')
    assert isinstance(info.value, KeyStoreError) and info.value.reason == 'key_storage_error'
    assert 'cannot write the sealed secret' in str(info.value)


def test_destroy_secret_zeroes_unlinks_and_never_follows_links(tmp_path):
    path = tmp_path / 'secret.sealed'
    path.write_bytes(b'secret bytes')
    alias = tmp_path / 'hardlink'
    os.link(path, alias)  # a second name shows the bytes were overwritten before the unlink
    destroy_secret(path)
    assert not path.exists() and alias.read_bytes() == bytes(len(b'secret bytes'))
    destroy_secret(path)  # absent: nothing to do
    target = tmp_path / 'precious'
    target.write_bytes(b'not a secret')
    os.symlink(target, tmp_path / 'link.sealed')
    with pytest.raises(KeyStoreError):
        destroy_secret(tmp_path / 'link.sealed')
    assert target.read_bytes() == b'not a secret'
