"""A robot's tally of autonomous episodes per model version, signed for the canary (ROS-free).

When the policy node drives an episode, its outcome is evidence about the model version it ran,
not a demonstration. `OutcomeCounter` adds it to the cumulative count of that version and signs a
new `wire.OutcomeReport` with the next sequence number; counts and sequence are on disk before a
report leaves, so a restart never reuses a sequence (the aggregator would refuse it as a replay)
and a lost report is superseded by the next one.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tensorguard_crypto.identity import Signer
from tensorguard_crypto.wire import OutcomeReport


class OutcomeCounter:
    """Cumulative (episodes, successes) per model version and the last signed sequence, in `path`."""

    def __init__(self, path: Path, signer: Signer) -> None:
        self.path = path
        self.signer = signer
        self.sequence = 0
        self.counts: dict[int, tuple[int, int]] = {}
        if path.exists():
            saved = json.loads(path.read_text())
            self.sequence = int(saved['sequence'])
            self.counts = {int(version): (int(n), int(s)) for version, (n, s) in saved['counts'].items()}

    def record(self, model_version: int, success: bool) -> OutcomeReport:
        """Count one autonomous episode of `model_version`; the signed report to send."""
        episodes, successes = self.counts.get(model_version, (0, 0))
        self.counts[model_version] = (episodes + 1, successes + int(success))
        self.sequence += 1
        self._save()
        episodes, successes = self.counts[model_version]
        return OutcomeReport(robot_id=self.signer.key_id, sequence=self.sequence, model_version=model_version,
                             episodes=episodes, successes=successes, created_at=time.time()).signed_by(self.signer)

    def _save(self) -> None:
        tmp = self.path.with_name(f'.{self.path.name}.tmp')
        tmp.write_text(json.dumps({'sequence': self.sequence,
                                   'counts': {str(v): list(c) for v, c in self.counts.items()}}))
        os.replace(tmp, self.path)
