"""The key service (ROS-free): one lattice key per round, at most one decryption per round, ever.

For each round the aggregator asks it for a round key: it draws a fresh ring-LWE key pair from the
OS CSPRNG, seals the secret at rest (``server/key_service/rounds/<r>/secret.sealed``, scrypt +
AES-256-GCM under the server passphrase), and returns the public half signed by its identity
(a `RoundKeyAnnouncement`, carried in the round config; robots check it against the key-service
identity they pin). Asked again for the same round before it was decrypted, it returns the same
announcement (so an aggregator restart can re-announce the round).

For a decryption it checks, itself: the aggregator's signature on the round config and on the
request; that the config carries exactly the round key it issued; that every contribution in the
manifest is signed by a distinct enrolled, unrevoked robot for exactly this round; that there are at
least max(round quorum, its own `min_quorum`) of them. Then, before anything is decrypted, it
writes ``decrypted.json`` for the round (created exclusively, fsync'd with its directory): a
second request for that round, by anyone, now or after any restart, is refused as
``round_already_decrypted``. It sums those robots' key ciphertexts, decrypts the summed bodies,
destroys the round's secret and signs the result. Every issue, decryption, destruction and refusal
is appended to ``server/key_service/decryptions.jsonl``.

Why: a key service that decrypts the full manifest and then overlapping subsets of the same round
hands the aggregator single robots' updates by differencing; a long-term secret would open every
recorded round after a theft. Neither is possible when each round's secret opens one sum and is gone.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tensorguard_crypto import update_codec
from tensorguard_crypto.fleet import KEY_SERVICE_ID, FleetPaths, load_server_identity
from tensorguard_crypto.keystore import (
    KeyFileExists,
    KeyStoreError,
    destroy_secret,
    seal_secret,
    unseal_secret,
    write_private_file,
)
from tensorguard_crypto.kms import KMSError
from tensorguard_crypto.params import standard_params
from tensorguard_crypto.refusal import Reason, Refusal, reason_of
from tensorguard_crypto.secagg import KeyService, KeyServiceSecretKey, SecAggError, generate_key_service_keys
from tensorguard_crypto.verify import QuorumNotMet, VerificationError, verify_aggregate_request, verify_round_config
from tensorguard_crypto.wire import AggregateResult, RoundKeyAnnouncement
from tensorguard_ros.config_fields import LatticeSettings, described

logger = logging.getLogger(__name__)


@dataclass
class KeyServiceSettings(LatticeSettings):
    """Key-service configuration: the fleet's `LatticeSettings` and its own (each field becomes a ROS parameter)."""

    fleet_dir: str = described('Fleet directory holding server/ (see provisioning).', '', read_only=True)
    min_quorum: int = described('Never decrypt an aggregate of fewer distinct robots, whatever a round says.', 2,
                                minimum=2, read_only=True)


class DecryptionRefused(Refusal):
    """The key service will not issue a round key or decrypt (raised with its reason)."""


class KeyServiceCore:
    """Issues per-round keys and decrypts each round's aggregate once (see module docstring)."""

    def __init__(self, settings: KeyServiceSettings, passphrase: bytes) -> None:
        if settings.min_quorum < 2:
            raise ValueError('min_quorum must be at least 2: one robot\'s "aggregate" is its update')
        self.settings = settings
        self.paths = FleetPaths(Path(settings.fleet_dir))
        self.kms = self.paths.kms()
        self.identity = load_server_identity(self.paths, KEY_SERVICE_ID, passphrase)
        self._passphrase = passphrase
        self.params = standard_params(settings.security_level, settings.plaintext_bits, settings.max_clients,
                                      settings.min_clients)
        self.rounds_dir = self.paths.server / 'key_service' / 'rounds'
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.paths.server / 'key_service' / 'decryptions.jsonl'

    def _round_dir(self, round_id: int) -> Path:
        return self.rounds_dir / str(int(round_id))

    def _secret_context(self, round_id: int) -> bytes:
        return f'{KEY_SERVICE_ID}/round/{round_id}'.encode()

    def round_key(self, round_id: int) -> bytes:
        """Signed `RoundKeyAnnouncement` of `round_id`'s lattice key (made on first request); raises
        `DecryptionRefused` ('round_key_spent') once that round was decrypted."""
        directory = self._round_dir(round_id)
        announcement_path, secret_path = directory / 'announcement.bin', directory / 'secret.sealed'
        try:
            if (directory / 'decrypted.json').exists():
                raise DecryptionRefused(f'round {round_id} was decrypted already; its key is gone',
                                        reason='round_key_spent')
            if announcement_path.exists() and secret_path.exists():
                return announcement_path.read_bytes()
            directory.mkdir(parents=True, exist_ok=True)
            secret, public = generate_key_service_keys(self.params)
            destroy_secret(secret_path)
            seal_secret(secret_path, secret.to_bytes(), self._passphrase, self._secret_context(round_id))
            announcement = RoundKeyAnnouncement(
                round_id=round_id, security_level=self.params.security_bits, ring_degree=self.params.n,
                modulus_bits=self.params.coefficient_bits, plaintext_bits=self.params.plaintext_bits,
                public_key=public.to_bytes(), signer_key_id=KEY_SERVICE_ID,
                created_at=time.time()).signed_by(self.identity).serialize()
            tmp = announcement_path.with_name('.announcement.tmp')
            tmp.write_bytes(announcement)
            os.replace(tmp, announcement_path)
        except DecryptionRefused as exc:
            self._log(round_id, [], exc.reason)
            raise
        except (OSError, KeyStoreError) as exc:
            self._log(round_id, [], 'key_state_unreadable')
            raise DecryptionRefused(f'round {round_id}: {type(exc).__name__}: {exc}',
                                    reason='key_state_unreadable') from None
        self._log(round_id, [], 'round_key_issued')
        return announcement

    def decrypt(self, round_config: bytes, request_blob: bytes) -> tuple[bytes, int]:
        """Signed AggregateResult bytes and the number of robots it covers; raises `DecryptionRefused`."""
        round_id = None
        try:
            self.kms.refresh()
            config = verify_round_config(round_config, self.kms)
            round_id = config.round_id
            if (config.ring_degree, config.modulus_bits, config.plaintext_bits, config.min_clients) != (
                    self.params.n, self.params.coefficient_bits, self.params.plaintext_bits, self.params.min_clients):
                raise DecryptionRefused(f'round {config.round_id} uses parameters this key service does not hold',
                                        reason='round_parameters_mismatch')
            request = verify_aggregate_request(request_blob, self.kms, config)
            robots = sorted(c.robot_id for c in request.contributions)
            if len(robots) < self.settings.min_quorum:
                raise QuorumNotMet(f'{len(robots)} contributors, the key service requires {self.settings.min_quorum}')
            directory = self._round_dir(config.round_id)
            announcement_path = directory / 'announcement.bin'
            if not announcement_path.exists() or announcement_path.read_bytes() != config.round_key:
                raise DecryptionRefused(f'round {config.round_id} does not carry the key this key service issued',
                                        reason='unknown_round_key')
            record = json.dumps({'round_id': config.round_id, 'robots': robots, 'at': time.time()}).encode()
            try:
                write_private_file(directory / 'decrypted.json', record, 'decryption record')
            except KeyFileExists:
                raise DecryptionRefused(f'round {config.round_id} was decrypted once; a second decryption is refused',
                                        reason='round_already_decrypted') from None
            aggregate = self._decrypt_once(config, request)
        except DecryptionRefused as exc:
            self._log(round_id, [], exc.reason)
            raise
        except VerificationError as exc:
            self._log(round_id, [], exc.reason)
            raise DecryptionRefused(str(exc), reason=exc.reason) from None
        except KMSError as exc:
            self._log(round_id, [], exc.reason)
            raise DecryptionRefused(f'the KMS cannot be used: {exc}',
                                    reason=reason_of(exc.reason, Reason.KMS_ERROR)) from None
        except (OSError, KeyStoreError) as exc:
            self._log(round_id, [], 'key_state_unreadable')
            raise DecryptionRefused(f'{type(exc).__name__}: {exc}', reason='key_state_unreadable') from None
        except (SecAggError, ValueError) as exc:
            self._log(round_id, [], 'decryption_failed')
            raise DecryptionRefused(str(exc), reason='decryption_failed') from None
        result = AggregateResult(round_id=config.round_id, config_digest=config.config_digest(), aggregate=aggregate,
                                 contributors=tuple(robots), signer_key_id=KEY_SERVICE_ID,
                                 created_at=time.time()).signed_by(self.identity)
        self._log(config.round_id, robots, 'decrypted')
        return result.serialize(), len(robots)

    def _decrypt_once(self, config, request) -> bytes:
        """Open the round's sealed secret, decrypt, and destroy the secret whatever happens."""
        secret_path = self._round_dir(config.round_id) / 'secret.sealed'
        try:
            secret = unseal_secret(secret_path, self._passphrase, self._secret_context(config.round_id))
            key_service = KeyService(KeyServiceSecretKey.from_bytes(secret, self.params))
            return update_codec.decrypt_aggregate(
                self.params, config.round_seed, key_service, request.summed_bodies,
                [c.key_ciphertext for c in request.contributions])
        finally:
            destroy_secret(secret_path)
            self._log(config.round_id, [], 'round_key_destroyed')

    def _log(self, round_id: int | None, robots: list[str], outcome: str) -> None:
        try:
            with open(self.log_path, 'a') as log:
                log.write(json.dumps({'at': time.time(), 'round_id': round_id, 'robots': robots,
                                      'outcome': outcome}) + '\n')
                log.flush()
                os.fsync(log.fileno())
        except OSError as exc:
            logger.error('key service: cannot append to %s (%s); outcome was %s for round %s',
                         self.log_path, exc, outcome, round_id)
