"""Fuzzing UpdatePackage.deserialize: only WireFormatError ever escapes, and decoding never allocates
more than the size cap (tracemalloc peak). 4,000 + 5,000 + 2,000 + 300 = 11,300 generated cases."""
import sys
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.wire import UpdatePackage, WireFormatError

sys.path.insert(0, str(Path(__file__).parent))
from crypto_test_support import make_round_config, make_update  # noqa: E402

SERVER = Identity.generate('server', Role.SERVER)
ROBOT = Identity.generate('robot_1', Role.ROBOT)
VALID = [make_update(ROBOT, make_round_config(SERVER), bodies_bytes=size).serialize() for size in (0, 40, 700)]


def fuzz(max_examples: int) -> settings:
    """Random (not derandomized) runs of the given size, without deadline or example database."""
    return settings(max_examples=max_examples, derandomize=False, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _decode_or_wire_error(data: bytes, max_bytes: int | None = None) -> None:
    try:
        package = UpdatePackage.deserialize(data, max_bytes)
    except WireFormatError:
        return
    assert package.serialize() == bytes(data), 'accepted bytes must be the canonical encoding'


@fuzz(4000)
@given(st.binary(max_size=600))
def test_random_bytes(data):
    _decode_or_wire_error(data)


@st.composite
def mutated_package(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(['flip', 'set', 'insert', 'delete', 'truncate', 'splice']))
        if action == 'flip' and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == 'set' and data:
            data[position] = draw(st.sampled_from([0x00, 0x7f, 0x80, 0xc0, 0xc1, 0xc4, 0xc6, 0xca, 0xcb, 0xcf,
                                                    0xd3, 0xd4, 0xdb, 0xdd, 0xdf, 0xff]))
        elif action == 'insert':
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == 'delete':
            del data[position:position + draw(st.integers(1, 8))]
        elif action == 'truncate':
            del data[position:]
        elif action == 'splice':
            donor = draw(st.sampled_from(VALID))
            start = draw(st.integers(0, len(donor) - 1))
            data[position:position + 16] = donor[start:start + draw(st.integers(1, 64))]
    return bytes(data)


@fuzz(5000)
@given(mutated_package())
def test_mutated_valid_packages(data):
    _decode_or_wire_error(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)


@st.composite
def structured_package(draw):
    """Well-formed msgpack with the right envelope but fields replaced by arbitrary values."""
    envelope = msgpack.unpackb(draw(st.sampled_from(VALID)), raw=False)
    record = envelope['record']
    for name in draw(st.lists(st.sampled_from(sorted(record)), min_size=1, max_size=3)):
        record[name] = draw(msgpack_values)
    return msgpack.packb(envelope, use_bin_type=True)


@fuzz(2000)
@given(structured_package())
def test_structured_field_substitution(data):
    _decode_or_wire_error(data)


CAP = 256 * 1024


def _peak_during_decode(data: bytes) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            UpdatePackage.deserialize(data, CAP)
        except WireFormatError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


HOSTILE = [
    b'\xdd\xff\xff\xff\xff' + b'\x00' * (CAP - 5),              # array header claiming 4 billion items
    b'\xdf\xff\xff\xff\xff' + b'\x00' * (CAP - 5),              # map header claiming 4 billion pairs
    b'\xc6\xff\xff\xff\xff' + b'\x00' * (CAP - 5),              # bin header claiming 4 GiB
    b'\xdb\x7f\xff\xff\xff' + b'a' * (CAP - 5),                 # str header claiming 2 GiB
    b'\xdc\xff\xff' * 8 + b'\x00' * (CAP - 24),                 # nested arrays of 65535 items
    b'\xdd\x00\x03\xff\xfb' + b'\x00' * (CAP - 5),               # array of ~262k one-byte items
    b'\xdd\x00\x00\x71\xc6' + b'\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00' * 29126,  # ~29k floats filling the cap
]


@pytest.mark.parametrize('data', HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_headers_never_allocate_more_than_cap(data):
    assert len(data) <= CAP
    assert _peak_during_decode(data) <= CAP


def test_valid_package_near_cap_decodes_within_cap():
    data = make_update(ROBOT, make_round_config(SERVER), bodies_bytes=CAP - 30000).serialize()
    assert len(data) <= CAP
    assert _peak_during_decode(data) <= CAP
    assert UpdatePackage.deserialize(data, CAP).serialize() == data


@fuzz(300)
@given(st.one_of(mutated_package(), st.binary(max_size=2000)))
def test_fuzzed_inputs_stay_within_cap(data):
    assert _peak_during_decode(data) <= CAP
