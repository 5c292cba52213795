"""docs/ros-interfaces.md's reason table and the Reason enum hold the same codes, and every refusal
class names its reason through the enum."""
import re
from pathlib import Path

from tensorguard_aggregator.key_service import DecryptionRefused
from tensorguard_aggregator.rounds import RoundError, UpdateUnusable
from tensorguard_crypto import verify
from tensorguard_crypto.refusal import Reason, Refusal
from tensorguard_edge.client import ModelRefused, RoundRefused
from tensorguard_edge.streams import StreamError

DOCS = Path(__file__).resolve().parents[1] / 'docs' / 'ros-interfaces.md'


def documented_codes() -> set[str]:
    text = DOCS.read_text()
    section = text[text.index('## Reason codes'):]
    section = section[:section.index('\n## ', 1)]
    return set(re.findall(r'^\| `([a-z_]+)` \|', section, flags=re.MULTILINE))


def test_the_reason_table_lists_exactly_the_enum():
    assert documented_codes() == {reason.value for reason in Reason}


def test_every_verification_refusal_stands_for_one_reason():
    classes = [c for c in vars(verify).values() if isinstance(c, type) and issubclass(c, verify.VerificationError)]
    assert len(classes) > 10
    assert all(isinstance(c.reason, Reason) for c in classes)


def test_generic_refusals_carry_the_reason_they_are_raised_with_and_refuse_unknown_codes():
    for refusal in (RoundRefused, ModelRefused, RoundError, DecryptionRefused, StreamError, UpdateUnusable):
        assert issubclass(refusal, Refusal)
        error = refusal('detail', reason='quorum_lost')
        assert error.reason is Reason.QUORUM_LOST and str(error) == 'detail'
        try:
            refusal('detail', reason='not_a_code')
        except ValueError:
            pass
        else:
            raise AssertionError(f'{refusal.__name__} accepted an unknown reason')
