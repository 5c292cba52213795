"""The key service (ROS-free): decrypts only aggregates of at least a quorum of enrolled robots.

It holds the ring-LWE secret that opens sums of key ciphertexts, and nothing else. For each
request it checks, itself: the aggregator's signature on the round config and on the request; that
every contribution in the manifest is signed by a distinct enrolled, unrevoked robot for exactly
this round; that there are at least max(round quorum, its own `min_quorum`) of them. Only then does
it sum those robots' key ciphertexts, decrypt the summed bodies and sign the result. Every
decryption (and every refusal) is appended to ``server/key_service/decryptions.jsonl``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tensorguard_crypto import update_codec
from tensorguard_crypto.params import standard_params
from tensorguard_crypto.secagg import SecAggError
from tensorguard_crypto.verify import QuorumNotMet, VerificationError, verify_aggregate_request, verify_round_config
from tensorguard_crypto.wire import AggregateResult
from tensorguard_ros.config_fields import described

from tensorguard_aggregator.provisioning import KEY_SERVICE_ID, FleetPaths, load_key_service, load_server_identity




@dataclass
class KeyServicePolicy:
    """Key-service configuration (each field becomes a ROS parameter)."""

    fleet_dir: str = described('Fleet directory holding server/ (see provisioning).', '')
    security_level: int = described('Lattice security level: 128, 192 or 256.', 128)
    plaintext_bits: int = described('Bits b of the summed integers.', 20)
    max_clients: int = described('Largest number of robots one round may sum.', 16)
    min_clients: int = described('DP: noise is sized for a sum over at least this many robots.', 2)
    min_quorum: int = described('Never decrypt an aggregate of fewer distinct robots, whatever a round says.', 2)


class DecryptionRefused(Exception):
    """The key service will not decrypt; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class KeyServiceCore:
    """Checks manifests and decrypts aggregates (see module docstring)."""

    def __init__(self, policy: KeyServicePolicy, passphrase: bytes) -> None:
        if policy.min_quorum < 2:
            raise ValueError('min_quorum must be at least 2: one robot\'s "aggregate" is its update')
        self.policy = policy
        self.paths = FleetPaths(Path(policy.fleet_dir))
        self.kms = self.paths.kms()
        self.identity = load_server_identity(self.paths, KEY_SERVICE_ID, passphrase)
        self.params = standard_params(policy.security_level, policy.plaintext_bits, policy.max_clients,
                                      policy.min_clients)
        self.key_service = load_key_service(self.paths, passphrase, self.params)
        self.log_path = self.paths.server / 'key_service' / 'decryptions.jsonl'
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def decrypt(self, round_config: bytes, request_blob: bytes) -> tuple[bytes, int]:
        """Signed AggregateResult bytes and the number of robots it covers; raises `DecryptionRefused`."""
        try:
            self.kms.refresh()
            config = verify_round_config(round_config, self.kms)
            if (config.ring_degree, config.modulus_bits, config.plaintext_bits, config.min_clients) != (
                    self.params.n, self.params.coefficient_bits, self.params.plaintext_bits, self.params.min_clients):
                raise DecryptionRefused('round_parameters_mismatch',
                                        f'round {config.round_id} uses parameters this key service does not hold')
            request = verify_aggregate_request(request_blob, self.kms, config)
            robots = sorted(c.robot_id for c in request.contributions)
            if len(robots) < self.policy.min_quorum:
                raise QuorumNotMet(f'{len(robots)} contributors, the key service requires {self.policy.min_quorum}')
            aggregate = update_codec.decrypt_aggregate(
                self.params, config.round_seed, self.key_service, request.summed_bodies,
                [c.key_ciphertext for c in request.contributions])
        except VerificationError as exc:
            self._log(None, [], exc.reason)
            raise DecryptionRefused(exc.reason, str(exc)) from None
        except (SecAggError, ValueError) as exc:
            self._log(None, [], 'decryption_failed')
            raise DecryptionRefused('decryption_failed', str(exc)) from None
        result = AggregateResult(round_id=config.round_id, config_digest=config.config_digest(), aggregate=aggregate,
                                 contributors=tuple(robots), signer_key_id=KEY_SERVICE_ID,
                                 created_at=time.time()).signed_by(self.identity)
        self._log(config.round_id, robots, 'decrypted')
        return result.serialize(), len(robots)

    def _log(self, round_id: int | None, robots: list[str], outcome: str) -> None:
        with open(self.log_path, 'a') as log:
            log.write(json.dumps({'at': time.time(), 'round_id': round_id, 'robots': robots,
                                  'outcome': outcome}) + '\n')
