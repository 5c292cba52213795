"""One exception family for everything a TensorGuard component refuses, with one enum of reasons.

Nodes count refusals by reason (`FleetStatus.rejections`, `RobotStatus.rejections`, the key
service's `/diagnostics`) and answer refused requests with it, so every code is a `Reason` member
and docs/ros-interfaces.md lists each one (a test checks the table against this enum). A refusal
class either stands for one reason (a class attribute, e.g. `verify.BadSignature`) or carries the
reason it is raised with (`Refusal(detail, reason=Reason.BUDGET_EXHAUSTED)`); an unknown code is a
programming error and raises ValueError at once.
"""
from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Every stable refusal code (the value is what nodes publish and count)."""

    # Verification of signed records (verify.py).
    VERIFICATION_ERROR = 'verification_error'
    OVERSIZED = 'oversized'
    MALFORMED = 'malformed'
    UNKNOWN_SIGNER = 'unknown_signer'
    REVOKED_SIGNER = 'revoked_signer'
    BAD_SIGNATURE = 'bad_signature'
    REPLAYED_ROUND = 'replayed_round'
    WRONG_ROUND = 'wrong_round'
    WRONG_ROUND_SEED = 'wrong_round_seed'
    WRONG_CONFIG_DIGEST = 'wrong_config_digest'
    WRONG_MODEL_VERSION = 'wrong_model_version'
    DEADLINE_PASSED = 'deadline_passed'
    PAYLOAD_SIZE_MISMATCH = 'payload_size_mismatch'
    DUPLICATE_ROBOT = 'duplicate_robot'
    QUORUM_NOT_MET = 'quorum_not_met'
    UNTRUSTED_ROUND_KEY = 'untrusted_round_key'
    STALE_MODEL = 'stale_model'
    # The KMS as a source of keys (kms.py); its other errors are operator errors of the CLI.
    KMS_ERROR = 'kms_error'
    AUDIT_LOG_TAMPERED = 'audit_log_tampered'
    STATE_MISMATCH = 'state_mismatch'
    KMS_UNREADABLE = 'kms_unreadable'
    KMS_STORAGE_ERROR = 'kms_storage_error'
    # The aggregator.
    TRANSPORT_DIGEST_MISMATCH = 'transport_digest_mismatch'
    HEADER_MISMATCH = 'header_mismatch'
    UNSEALING_FAILED = 'unsealing_failed'
    MALFORMED_BODIES = 'malformed_bodies'
    NO_OPEN_ROUND = 'no_open_round'
    ROUND_OPEN = 'round_open'
    NO_MODEL = 'no_model'
    QUORUM_LOST = 'quorum_lost'
    CONTRIBUTORS_MISMATCH = 'contributors_mismatch'
    KEY_SERVICE_UNAVAILABLE = 'key_service_unavailable'
    KEY_SERVICE_TIMEOUT = 'key_service_timeout'
    STORAGE_ERROR = 'storage_error'
    INTERNAL_ERROR = 'internal_error'
    QUARANTINED = 'quarantined'
    ROUND_STATE_UNREADABLE = 'round_state_unreadable'
    MODEL_FILE_UNREADABLE = 'model_file_unreadable'
    REPLAYED_REPORT = 'replayed_report'
    UNKNOWN_MODEL_VERSION = 'unknown_model_version'
    # The key service.
    ROUND_PARAMETERS_MISMATCH = 'round_parameters_mismatch'
    ROUND_ALREADY_DECRYPTED = 'round_already_decrypted'
    ROUND_KEY_SPENT = 'round_key_spent'
    UNKNOWN_ROUND_KEY = 'unknown_round_key'
    KEY_STATE_UNREADABLE = 'key_state_unreadable'
    DECRYPTION_FAILED = 'decryption_failed'
    # A robot's edge node.
    ALREADY_CONTRIBUTED = 'already_contributed'
    BUDGET_EXHAUSTED = 'budget_exhausted'
    MODEL_MISMATCH = 'model_mismatch'
    SHAPE_MISMATCH = 'shape_mismatch'
    NO_DEMONSTRATIONS = 'no_demonstrations'
    UPDATE_TOO_LARGE = 'update_too_large'
    NOT_NEWER = 'not_newer'
    MALFORMED_MODEL = 'malformed_model'
    ROUND_BUSY = 'round_busy'
    ROUND_FAILED = 'round_failed'
    DEMONSTRATION_REFUSED = 'demonstration_refused'
    # A robot's input streams and episode markers (tensorguard_edge.alignment, docs/robot-inputs.md).
    MALFORMED_SAMPLE = 'malformed_sample'
    LATE_SAMPLE = 'late_sample'
    FRAME_UNALIGNED = 'frame_unaligned'
    MALFORMED_MARKER = 'malformed_marker'
    EPISODE_RUNNING = 'episode_running'
    NO_EPISODE = 'no_episode'
    EPISODE_EMPTY = 'episode_empty'
    EPISODE_ABANDONED = 'episode_abandoned'
    EPISODE_FAILED = 'episode_failed'
    # The Zenoh gateway (tensorguard_gateway, docs/gateway.md).
    FOREIGN_ROBOT = 'foreign_robot'
    # Site aggregation (site_sum.py, docs/site-aggregation.md).
    SITE_AGGREGATION_OFF = 'site_aggregation_off'
    UNKNOWN_SITE = 'unknown_site'
    IMPLAUSIBLE_AGGREGATE = 'implausible_aggregate'


class Refusal(Exception):
    """Base of every refusal: a `Reason` and a human-readable detail (never key material)."""

    reason: Reason

    def __init__(self, detail: str, *, reason: Reason | str | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = Reason(reason)
        elif not isinstance(getattr(type(self), 'reason', None), Reason):
            raise TypeError(f'{type(self).__name__} stands for no single reason: pass reason=')


def reason_of(code: str, fallback: Reason) -> Reason:
    """`code` as a `Reason` if it is one (e.g. the code of a KMS error), else `fallback`."""
    try:
        return Reason(code)
    except ValueError:
        return fallback
