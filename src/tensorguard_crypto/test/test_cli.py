"""The `tensorguard` operator CLI: commands, clear errors and exit codes."""
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tensorguard_crypto import keystore
from tensorguard_crypto.cli import (
    EXIT_FLEET,
    EXIT_HSM,
    EXIT_KEY_FILE,
    EXIT_KMS,
    EXIT_OK,
    EXIT_TAMPERED,
    EXIT_USAGE,
    main,
)
from tensorguard_crypto.keystore import PASSPHRASE_ENV, load_key, read_key_info
from tensorguard_crypto.kms import KeyManagementSystem

sys.path.insert(0, str(Path(__file__).parent))
from crypto_test_support import softhsm_token  # noqa: E402

PASSPHRASE = 'operator passphrase 42'


@pytest.fixture
def operator(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    monkeypatch.setenv('TENSORGUARD_KMS_AUDIT_LOG', str(tmp_path / 'kms' / 'audit.log'))
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info(capsys, monkeypatch):
    monkeypatch.delenv(keystore.SCRYPT_COST_ENV, raising=False)
    code, out, _ = run(capsys, 'info')
    assert code == EXIT_OK and 'wire schema version' in out and 'scrypt N=2^17' in out


def test_info_and_keygen_name_a_bad_cost_variable(operator, capsys, monkeypatch):
    monkeypatch.setenv(keystore.SCRYPT_COST_ENV, '12')
    for argv in (('info',), ('keygen', str(operator / 'k.key'), '--key-id', 'robot_1')):
        code, _, err = run(capsys, *argv)
        assert code == EXIT_KEY_FILE and keystore.SCRYPT_COST_ENV in err
    assert not (operator / 'k.key').exists()


def test_keygen_register_rotate_revoke_list_verify(operator, capsys):
    key = operator / 'keys' / 'robot_1.key'
    code, out, _ = run(capsys, 'keygen', str(key), '--key-id', 'robot_1', '--scrypt-log2-n', '15')
    assert code == EXIT_OK and load_key(key, PASSPHRASE).public_key_bytes().hex() in out
    assert read_key_info(key).scrypt_log2_n == 15
    assert run(capsys, 'kms', 'register', 'robot_1', '--key-file', str(key), '--owner', 'fleet')[0] == EXIT_OK
    new_key = operator / 'keys' / 'robot_1.v2.key'
    assert run(capsys, 'keygen', str(new_key), '--key-id', 'robot_1')[0] == EXIT_OK
    code, out, _ = run(capsys, 'kms', 'rotate', 'robot_1', '--key-file', str(new_key), '--reason', 'yearly')
    assert code == EXIT_OK and 'v2' in out
    code, out, _ = run(capsys, 'kms', 'revoke', 'robot_1', '--reason', 'stolen')
    assert code == EXIT_OK and 'revoked' in out
    code, out, _ = run(capsys, 'kms', 'list', '--json')
    listing = json.loads(out)
    assert listing[0]['status'] == 'revoked' and listing[0]['metadata']['public_key'] == \
        load_key(new_key, PASSPHRASE).public_key_bytes().hex()
    code, out, _ = run(capsys, 'kms', 'verify-log')
    assert code == EXIT_OK and '3 entries' in out
    assert KeyManagementSystem(operator / 'kms' / 'audit.log').is_revoked('robot_1')


def test_errors_and_exit_codes(operator, capsys, monkeypatch):
    key = operator / 'robot_2.key'
    assert run(capsys, 'keygen', str(key), '--key-id', 'robot_2')[0] == EXIT_OK
    code, _, err = run(capsys, 'keygen', str(key), '--key-id', 'robot_2')
    assert code == EXIT_KEY_FILE and 'already exists' in err
    code, _, err = run(capsys, 'keygen', str(operator / 'x.key'), '--key-id', 'x', '--security-level', '256')
    assert code == EXIT_KEY_FILE and '128-bit' in err
    os.chmod(key, 0o644)
    code, _, err = run(capsys, 'kms', 'register', 'robot_2', '--key-file', str(key), '--owner', 'o')
    assert code == EXIT_KEY_FILE and 'chmod 600' in err
    os.chmod(key, 0o600)
    code, _, err = run(capsys, 'kms', 'register', 'robot_3', '--key-file', str(key), '--owner', 'o')
    assert code == EXIT_KEY_FILE and "holds key 'robot_2'" in err
    assert run(capsys, 'kms', 'register', 'robot_2', '--key-file', str(key), '--owner', 'o')[0] == EXIT_OK
    code, _, err = run(capsys, 'kms', 'register', 'robot_2', '--key-file', str(key), '--owner', 'o')
    assert code == EXIT_KMS and 'already registered' in err
    code, _, err = run(capsys, 'kms', 'revoke', 'nobody')
    assert code == EXIT_KMS and 'nobody' in err
    code, _, err = run(capsys, 'kms', 'register', 'r', '--public-key', 'zz', '--owner', 'o')
    assert code == EXIT_USAGE
    with pytest.raises(SystemExit) as info:
        main(['kms', 'frobnicate'])
    assert info.value.code == EXIT_USAGE
    monkeypatch.delenv('TENSORGUARD_KMS_AUDIT_LOG')
    assert run(capsys, 'kms', 'list')[0] == EXIT_USAGE


def test_verify_log_reports_tampering(operator, capsys):
    for robot in ('robot_a', 'robot_b'):
        assert run(capsys, 'keygen', str(operator / f'{robot}.key'), '--key-id', robot)[0] == EXIT_OK
        assert run(capsys, 'kms', 'register', robot, '--key-file', str(operator / f'{robot}.key'),
                   '--owner', 'fleet')[0] == EXIT_OK
    log = operator / 'kms' / 'audit.log'
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[1] + lines[0])
    code, _, err = run(capsys, 'kms', 'verify-log')
    assert code == EXIT_TAMPERED and 'FAILED' in err


def test_hsm_keygen_and_register(operator, capsys, monkeypatch):
    token = softhsm_token()
    monkeypatch.setenv('TENSORGUARD_HSM_PIN', token.pin)
    uri = f'hsm://token/{token.label}/cli-{secrets.token_hex(3)}'
    code, out, _ = run(capsys, 'keygen', uri, '--key-id', 'server', '--role', 'server')
    assert code == EXIT_OK and 'public_key' in out
    code, _, _ = run(capsys, 'kms', 'register', 'server', '--key-file', uri, '--owner', 'ops', '--role', 'server')
    assert code == EXIT_OK
    assert KeyManagementSystem(operator / 'kms' / 'audit.log').get('server').metadata.public_key.hex() in out
    monkeypatch.setenv('TENSORGUARD_HSM_PIN', 'wrong-pin-0000')
    code, _, err = run(capsys, 'keygen', uri + 'x', '--key-id', 'server', '--role', 'server')
    assert code == EXIT_HSM and 'refused the PIN' in err


def test_console_entry_point_runs_as_a_process():
    environment = {**os.environ, 'PYTHONPATH': str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, '-m', 'tensorguard_crypto.cli', 'info'], capture_output=True,
                            text=True, env=environment, timeout=60)
    assert result.returncode == 0 and 'PKCS#11 module' in result.stdout


def test_bench_prints_measurements(capsys):
    code, out, _ = run(capsys, 'bench', '--packages', '2', '--body-bytes', '1000')
    assert code == EXIT_OK and 'RoundVerifier.verify' in out and 'scrypt key derivation' in out


# --- Review issue 10: usage errors, unusable or garbage KMS files, weak and duplicate keys ---

def _one_error_line(err: str) -> bool:
    return err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err


@pytest.mark.parametrize('argv', [['bench', '--packages', '0'], ['bench', '--packages', '-3'],
                                  ['bench', '--body-bytes', '0'], ['bench', '--packages', 'many']])
def test_bench_refuses_non_positive_counts(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE and '--' in capsys.readouterr().err


@pytest.mark.parametrize('argv', [['keygen', 'k.key', '--key-id', '../x'], ['kms', 'register', 'a/b', '--owner', 'o'],
                                  ['kms', 'rotate', 'Robot', '--public-key', '00'], ['kms', 'revoke', '.'],
                                  ['kms', 'revoke', ''], ['kms', 'revoke', 'r' * 64]])
def test_malformed_key_ids_are_usage_errors(operator, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE and 'not a valid id' in capsys.readouterr().err
    assert not (operator / 'kms').exists() and not (operator / 'k.key').exists()


@pytest.mark.parametrize('where', ['audit_dir', 'audit_under_file', 'audit_fifo', 'state_dir', 'state_under_file'])
def test_unusable_kms_paths_exit_with_one_error_line(operator, capsys, where):
    regular = operator / 'regular'
    regular.write_text('x')
    (operator / 'dir').mkdir()
    os.mkfifo(operator / 'fifo')
    good_log = str(operator / 'kms' / 'audit.log')
    audit, state = {'audit_dir': (str(operator / 'dir'), None), 'audit_under_file': (str(regular / 'a.log'), None),
                    'audit_fifo': (str(operator / 'fifo'), None), 'state_dir': (good_log, str(operator / 'dir')),
                    'state_under_file': (good_log, str(regular / 's.json'))}[where]
    argv = ['kms', '--audit-log', audit] + (['--state', state] if state else []) + ['list']
    code, _, err = run(capsys, *argv)
    assert code == EXIT_KMS and _one_error_line(err), err


def test_unreadable_audit_log_exits_with_one_error_line(operator):
    """Run as another process: as root, without the capabilities that bypass file permissions."""
    log = operator / 'kms' / 'audit.log'
    KeyManagementSystem(log)
    log.write_text('')
    log.chmod(0)
    prefix = ['setpriv', '--bounding-set', '-dac_override,-dac_read_search'] if os.geteuid() == 0 else []
    environment = {**os.environ, 'PYTHONPATH': str(Path(__file__).parents[1])}
    result = subprocess.run(prefix + [sys.executable, '-m', 'tensorguard_crypto.cli', 'kms', '--audit-log', str(log),
                                      'list'], capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == EXIT_KMS and _one_error_line(result.stderr), result.stderr
    assert 'Permission denied' in result.stderr


def test_garbage_kms_files_exit_tampered(operator, capsys):
    assert run(capsys, 'kms', 'register', 'robot_1', '--owner', 'o')[0] == EXIT_OK
    log = operator / 'kms' / 'audit.log'
    state = log.with_name(log.name + '.state.json')
    original_log, original_state = log.read_bytes(), state.read_bytes()
    for path, garbage in ((log, b'[' * 100_000), (log, bytes(range(256))), (state, b'{' * 100_000),
                          (state, b'{"format": 1, "keys": ' + b'9' * 5000 + b'}')):
        path.write_bytes(garbage)
        code, _, err = run(capsys, 'kms', 'verify-log')
        assert code == EXIT_TAMPERED and _one_error_line(err) and 'FAILED' in err, err
        log.write_bytes(original_log)
        state.write_bytes(original_state)
    assert run(capsys, 'kms', 'verify-log')[0] == EXIT_OK


def test_weak_and_duplicate_public_keys_are_kms_refusals(operator, capsys):
    identity_point = (1).to_bytes(32, 'little').hex()
    code, _, err = run(capsys, 'kms', 'register', 'robot_1', '--public-key', identity_point, '--owner', 'o')
    assert code == EXIT_KMS and 'small order' in err
    key = operator / 'robot_1.key'
    assert run(capsys, 'keygen', str(key), '--key-id', 'robot_1', '--scrypt-log2-n', '15')[0] == EXIT_OK
    public_key = read_key_info(key).public_key.hex()
    assert run(capsys, 'kms', 'register', 'robot_1', '--public-key', public_key, '--owner', 'o')[0] == EXIT_OK
    code, _, err = run(capsys, 'kms', 'register', 'robot_2', '--public-key', public_key, '--owner', 'o')
    assert code == EXIT_KMS and "already enrolled as 'robot_1'" in err and _one_error_line(err)


# --- Issue 11: operator commands for a real fleet (fleet init/enroll/rotate/revoke/status, robot install) ---

ROBOT_PASSPHRASE = 'robot_1 passphrase 77'


def _fleet_run(capsys, outputs: list, *argv):
    code, out, err = run(capsys, *argv)
    outputs.append(out + err)
    return code, out, err


def test_fleet_commands_provision_enrol_install_rotate_revoke(operator, capsys, monkeypatch):
    fleet_dir, robot_dir, outputs = operator / 'fleet', operator / 'robot_1', []
    code, out, _ = _fleet_run(capsys, outputs, 'fleet', 'init', str(fleet_dir))
    assert code == EXIT_OK and all(name in out for name in ('aggregator', 'server', 'key_service'))
    code, _, err = _fleet_run(capsys, outputs, 'fleet', 'init', str(fleet_dir))
    assert code == EXIT_FLEET and 'not empty' in err and _one_error_line(err)

    monkeypatch.setenv(PASSPHRASE_ENV, ROBOT_PASSPHRASE)  # the robot's own passphrase, set for its enrolment
    bundle = operator / 'out' / 'robot_1.tar'
    code, out, _ = _fleet_run(capsys, outputs, 'fleet', 'enroll', str(fleet_dir), 'robot_1', '--bundle', str(bundle))
    assert code == EXIT_OK and 'robot install' in out and oct(bundle.stat().st_mode & 0o777) == '0o600'
    code, _, err = _fleet_run(capsys, outputs, 'fleet', 'enroll', str(fleet_dir), 'robot_1', '--bundle',
                              str(operator / 'again.tar'))
    assert code == EXIT_KMS and 'already registered' in err
    code, _, err = _fleet_run(capsys, outputs, 'fleet', 'enroll', str(fleet_dir), 'robot_2', '--bundle', str(bundle))
    assert code == EXIT_FLEET and 'refusing to overwrite' in err
    assert not (operator / 'again.tar').exists()

    code, out, _ = _fleet_run(capsys, outputs, 'robot', 'install', str(bundle), str(robot_dir))
    assert code == EXIT_OK and f'key_path:={robot_dir / "identity.key"}' in out and 'robot_id:=robot_1' in out
    assert load_key(robot_dir / 'identity.key', ROBOT_PASSPHRASE).key_id == 'robot_1'
    code, _, err = _fleet_run(capsys, outputs, 'robot', 'install', str(bundle), str(robot_dir))
    assert code == EXIT_FLEET and 'already exist' in err

    rotated = operator / 'out' / 'robot_1.v2.tar'
    code, out, _ = _fleet_run(capsys, outputs, 'fleet', 'rotate', str(fleet_dir), 'robot_1', '--bundle', str(rotated),
                              '--reason', 'yearly')
    assert code == EXIT_OK and ' v2 ' in out
    assert _fleet_run(capsys, outputs, 'robot', 'install', str(rotated), str(robot_dir), '--replace')[0] == EXIT_OK
    kms = KeyManagementSystem(fleet_dir / 'server' / 'kms' / 'audit.log')
    assert read_key_info(robot_dir / 'identity.key').public_key == kms.public_key_for('robot_1')

    code, out, _ = _fleet_run(capsys, outputs, 'fleet', 'status', str(fleet_dir))
    assert code == EXIT_OK and 'robot_1' in out and '1 active, 0 revoked' in out and 'verified: 5 entries' in out
    with pytest.raises(SystemExit) as info:
        main(['fleet', 'revoke', str(fleet_dir), 'robot_1'])  # a revocation always says why
    assert info.value.code == EXIT_USAGE
    code, out, _ = _fleet_run(capsys, outputs, 'fleet', 'revoke', str(fleet_dir), 'robot_1', '--reason', 'stolen')
    assert code == EXIT_OK and 'revoked' in out
    for robot in ('robot_1', 'server', 'nobody'):
        code, _, err = _fleet_run(capsys, outputs, 'fleet', 'revoke', str(fleet_dir), robot, '--reason', 'x')
        assert code == EXIT_FLEET and _one_error_line(err), err
    code, out, _ = _fleet_run(capsys, outputs, 'fleet', 'status', str(fleet_dir), '--json')
    status = json.loads(out)
    assert code == EXIT_OK and [(r['key_id'], r['status'], r['revocation_reason']) for r in status['robots']] == [
        ('robot_1', 'revoked', 'stolen')]
    assert not any(PASSPHRASE in text or ROBOT_PASSPHRASE in text for text in outputs)


def test_fleet_refusals_wrong_passphrase_crafted_bundle_and_status_problems(operator, capsys, monkeypatch):
    fleet_dir, bundle = operator / 'fleet', operator / 'robot_1.tar'
    code, _, err = run(capsys, 'fleet', 'enroll', str(fleet_dir), 'robot_1', '--bundle', str(bundle))
    assert code == EXIT_FLEET and 'fleet init' in err and not fleet_dir.exists()
    assert run(capsys, 'fleet', 'init', str(fleet_dir))[0] == EXIT_OK
    assert run(capsys, 'fleet', 'enroll', str(fleet_dir), 'robot_1', '--bundle', str(bundle))[0] == EXIT_OK

    monkeypatch.setenv(PASSPHRASE_ENV, 'the wrong passphrase')
    code, _, err = run(capsys, 'robot', 'install', str(bundle), str(operator / 'robot'))
    assert code == EXIT_KEY_FILE and 'wrong passphrase' in err and not (operator / 'robot').exists()
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)

    bundle.chmod(0o644)
    code, _, err = run(capsys, 'robot', 'install', str(bundle), str(operator / 'robot'))
    assert code == EXIT_KEY_FILE and 'chmod 600' in err
    bundle.chmod(0o600)
    crafted = operator / 'crafted.tar'
    with tarfile.open(crafted, 'w') as archive, tarfile.open(bundle) as genuine:
        for member in genuine.getmembers():
            archive.addfile(member, genuine.extractfile(member))
        evil = tarfile.TarInfo('../escape.sh')
        evil.size = 4
        archive.addfile(evil, io.BytesIO(b'boom'))
    crafted.chmod(0o600)
    code, _, err = run(capsys, 'robot', 'install', str(crafted), str(operator / 'robot'))
    assert code == EXIT_FLEET and "'../escape.sh'" in err and _one_error_line(err)
    assert not (operator / 'robot').exists() and not (operator.parent / 'escape.sh').exists()

    server_key = fleet_dir / 'server' / 'server.key'
    server_key.chmod(0o644)
    code, out, err = run(capsys, 'fleet', 'status', str(fleet_dir))
    assert code == EXIT_FLEET and 'chmod 600' in out and '1 problem' in err
    server_key.chmod(0o600)
    log = fleet_dir / 'server' / 'kms' / 'audit.log'
    log.write_text(log.read_text().replace('"robot_1"', '"robot_2"', 1))
    code, _, err = run(capsys, 'fleet', 'status', str(fleet_dir))
    assert code == EXIT_TAMPERED and 'FAILED' in err


def _options(parser) -> list[str]:
    found = []
    for action in parser._actions:
        found += action.option_strings
        for sub in getattr(action, 'choices', None) or {}:
            if isinstance(action.choices, dict):
                found += _options(action.choices[sub])
    return found


def test_passphrases_never_come_from_argv():
    from tensorguard_crypto.cli import build_parser
    assert not [option for option in _options(build_parser()) if 'pass' in option or 'pin' in option]
    with pytest.raises(SystemExit) as info:
        main(['fleet', 'init', 'somewhere', '--passphrase', 'secret passphrase'])
    assert info.value.code == EXIT_USAGE and not Path('somewhere').exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_passphrase_prompt_asks_twice_for_new_keys_and_once_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    code, _, err = run(capsys, 'fleet', 'init', str(tmp_path / 'fleet'))
    assert code == EXIT_KEY_FILE and PASSPHRASE_ENV in err  # no terminal, no variable: refused, nothing made
    assert not (tmp_path / 'fleet' / 'server' / 'server.key').exists()
    monkeypatch.setattr('sys.stdin', _Terminal())
    answers, prompts = [], []

    def answer(prompt: str) -> str:
        prompts.append(prompt)
        return answers.pop(0)
    monkeypatch.setattr('getpass.getpass', answer)
    answers[:] = [PASSPHRASE, PASSPHRASE + 'x']
    code, _, err = run(capsys, 'fleet', 'init', str(tmp_path / 'fleet'))
    assert code == EXIT_KEY_FILE and 'differ' in err and not (tmp_path / 'fleet' / 'server' / 'server.key').exists()
    answers[:] = ['short', 'short']
    code, _, err = run(capsys, 'fleet', 'init', str(tmp_path / 'fleet'))
    assert code == EXIT_KEY_FILE and 'at least 8' in err
    answers[:], prompts[:] = [PASSPHRASE, PASSPHRASE], []
    code, out, err = run(capsys, 'fleet', 'init', str(tmp_path / 'fleet'))
    assert code == EXIT_OK and len(prompts) == 2 and PASSPHRASE not in out + err
    answers[:] = [ROBOT_PASSPHRASE, ROBOT_PASSPHRASE]
    bundle = tmp_path / 'robot_1.tar'
    assert run(capsys, 'fleet', 'enroll', str(tmp_path / 'fleet'), 'robot_1', '--bundle', str(bundle))[0] == EXIT_OK
    answers[:], prompts[:] = [ROBOT_PASSPHRASE], []
    assert run(capsys, 'robot', 'install', str(bundle), str(tmp_path / 'robot'))[0] == EXIT_OK
    assert len(prompts) == 1 and 'Passphrase for' in prompts[0]
