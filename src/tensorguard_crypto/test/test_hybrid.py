"""Sealing bodies to the aggregator's round key: only that key and context open them (hypothesis)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_crypto.hybrid import SEAL_OVERHEAD_BYTES, HybridError, SealedBoxKey, seal

KEY = SealedBoxKey()
OTHER = SealedBoxKey()


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=4096), context=st.binary(max_size=64))
def test_round_trip_and_exact_overhead(plaintext, context):
    sealed = seal(KEY.public_key, plaintext, context)
    assert len(sealed) == len(plaintext) + SEAL_OVERHEAD_BYTES
    assert KEY.open(sealed, context) == plaintext


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=512), position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(plaintext, position, bit):
    sealed = bytearray(seal(KEY.public_key, plaintext, b'ctx'))
    sealed[position % len(sealed)] ^= 1 << bit
    with pytest.raises(HybridError):
        KEY.open(bytes(sealed), b'ctx')


def test_other_key_other_context_and_truncation_are_refused():
    sealed = seal(KEY.public_key, b'body bytes', b'robot_a/1')
    for attempt in (lambda: OTHER.open(sealed, b'robot_a/1'), lambda: KEY.open(sealed, b'robot_b/1'),
                    lambda: KEY.open(sealed[:SEAL_OVERHEAD_BYTES - 1], b'robot_a/1')):
        with pytest.raises(HybridError):
            attempt()


def test_each_seal_uses_a_fresh_ephemeral_key():
    assert seal(KEY.public_key, b'same', b'c')[:32] != seal(KEY.public_key, b'same', b'c')[:32]


def test_a_low_order_recipient_key_is_refused():
    with pytest.raises(HybridError):
        seal(bytes(32), b'body', b'c')


def test_secret_survives_a_save_and_load_and_is_not_in_repr():
    loaded = SealedBoxKey.from_secret_bytes(KEY.secret_bytes())
    assert loaded.public_key == KEY.public_key
    assert KEY.secret_bytes().hex() not in repr(KEY)
