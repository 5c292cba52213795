"""`KMSCheck`: re-verify the KMS's audit log and state file whenever either changed on disk.

`KeyManagementSystem.refresh()` reloads only when the audit log changed, so an edited state file
would go unnoticed until the next enrolment or revocation; a full `verify_log()` on every timer
tick would re-read both files each time (and repeat the KMS's warning about a snapshot one entry
behind). The server nodes call a `KMSCheck` every tick and before each operation instead: two
``stat`` calls unless a file changed, and it keeps raising for as long as the files do not verify
or cannot be read.
"""
from __future__ import annotations

import os
from pathlib import Path

from tensorguard_crypto.kms import KeyManagementSystem, KMSError

Stamp = tuple[int, int, int] | None


class KMSUnreadable(KMSError):
    """The KMS's audit log or state file cannot be read (permissions, I/O error)."""

    reason = 'kms_unreadable'


def _stamp(path: Path) -> Stamp:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


class KMSCheck:
    """Callable that raises a `KMSError` (`AuditLogTampered`, `StateMismatch`, `KMSUnreadable`...)
    while the KMS's files do not verify; files verified once are not read again until they change."""

    def __init__(self, kms: KeyManagementSystem) -> None:
        self.kms = kms
        self._verified: tuple[Stamp, Stamp] | None = None

    def __call__(self) -> None:
        """Verify the audit log's hash chain and the state file if either changed since the last success."""
        try:
            stamps = (_stamp(self.kms.audit_log_path), _stamp(self.kms.state_path))
            if stamps != self._verified:
                self.kms.verify_log()
                self._verified = stamps
        except OSError as exc:
            raise KMSUnreadable(str(exc)) from None
