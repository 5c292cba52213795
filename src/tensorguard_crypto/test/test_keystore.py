"""Key files at rest: encrypted, mode 0600, clear errors, and never any key bytes in logs or messages."""
import base64
import logging
import os
import stat

import pytest

from tensorguard_crypto.identity import InvalidId, Role
from tensorguard_crypto.keystore import (PASSPHRASE_ENV, InvalidKeyFileId, KeyFileCorrupt, KeyFileExists,
                                         KeyFileNotFound, KeyPathInvalid, KeyStoreError, LoosePermissions,
                                         MissingPassphrase, UnsupportedSecurityLevel, WrongPassphrase, generate_key,
                                         load_key, read_key_info)

PASSPHRASE = 'correct horse battery staple'
FAST = 15  # scrypt log2 N for tests; the default (17) is exercised once below


def test_round_trip_default_cost_and_mode(tmp_path):
    path = tmp_path / 'keys' / 'robot_1.key'
    identity = generate_key(path, security_level=128, passphrase=PASSPHRASE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key(path, PASSPHRASE)
    assert loaded.key_id == 'robot_1' and loaded.role is Role.ROBOT
    assert loaded.public_key_bytes() == identity.public_key_bytes()
    info = read_key_info(path)
    assert info.public_key == identity.public_key_bytes() and info.scrypt_log2_n == 17


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
        for action in (lambda: load_key(path, PASSPHRASE), lambda: read_key_info(path)):
            with pytest.raises(KeyPathInvalid) as info:
                action()
            assert info.value.reason == 'key_path_invalid' and str(path) in str(info.value)


@pytest.mark.parametrize('where', ['regular/k.key', 'regular/sub/k.key', 'dir'])
def test_keygen_where_no_key_file_can_be_created(tmp_path, where):
    (tmp_path / 'regular').write_text('x')
    (tmp_path / 'dir').mkdir()
    with pytest.raises(KeyPathInvalid, match='regular is not a directory|is a directory'):
        generate_key(tmp_path / where, passphrase=PASSPHRASE, key_id='robot_1', scrypt_log2_n=FAST)
