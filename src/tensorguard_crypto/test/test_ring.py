"""Tests for the negacyclic NTT ring."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_crypto.params import DEFAULT_PRIME
from tensorguard_crypto.ring import NegacyclicRing, RingError, is_prime, primitive_root_of_unity

Q = DEFAULT_PRIME


def schoolbook(a: list[int], b: list[int], q: int) -> list[int]:
    n = len(a)
    out = [0] * n
    for i in range(n):
        for j in range(n):
            if i + j < n:
                out[i + j] += a[i] * b[j]
            else:
                out[i + j - n] -= a[i] * b[j]
    return [v % q for v in out]


@settings(max_examples=25, deadline=None)
@given(log_n=st.integers(1, 6), data=st.data())
def test_multiply_matches_schoolbook(log_n, data):
    n = 1 << log_n
    ring = NegacyclicRing(n, Q)
    coeffs = st.lists(st.integers(0, Q - 1), min_size=n, max_size=n)
    a, b = data.draw(coeffs), data.draw(coeffs)
    got = ring.multiply(np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64))
    assert got.tolist() == schoolbook(a, b, Q)


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 5), seed=st.binary(min_size=8, max_size=8))
def test_ntt_roundtrip_batched(batch, seed):
    ring = NegacyclicRing(2048, Q)
    values = np.frombuffer((seed * (batch * 2048))[: batch * 2048 * 4], dtype='<u4').astype(np.uint64) % np.uint64(Q)
    x = values.reshape(batch, 2048)
    assert np.array_equal(ring.intt(ring.ntt(x)), x)


def test_batched_transform_equals_per_row():
    ring = NegacyclicRing(1024, Q)
    x = (np.arange(3 * 1024, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(Q)
    x = x.reshape(3, 1024)
    batched = ring.ntt(x)
    for row in range(3):
        assert np.array_equal(batched[row], ring.ntt(x[row]))


def test_x_to_the_n_is_minus_one():
    ring = NegacyclicRing(16, Q)
    x_half = np.zeros(16, dtype=np.uint64)
    x_half[8] = 1
    product = ring.multiply(x_half, x_half)
    expected = np.zeros(16, dtype=np.uint64)
    expected[0] = Q - 1
    assert np.array_equal(product, expected)


def test_signed_and_centred_conversions():
    ring = NegacyclicRing(8, Q)
    signed = np.array([-3, -1, 0, 1, 2, -(Q // 2), Q // 2, 5])
    assert np.array_equal(ring.centered(ring.from_signed(signed)), signed)
    with pytest.raises(RingError):
        ring.from_signed(np.array([Q]))


def test_add_sub_wrap():
    ring = NegacyclicRing(4, Q)
    a = np.array([Q - 1, 0, 5, Q - 2], dtype=np.uint64)
    b = np.array([1, Q - 1, 7, Q - 2], dtype=np.uint64)
    assert ring.add(a, b).tolist() == [0, Q - 1, 12, Q - 4]
    assert ring.sub(a, b).tolist() == [Q - 2, 1, Q - 2, 0]


@pytest.mark.parametrize('n, q, reason', [
    (1000, Q, 'power of two'),
    (2048, Q + 2, 'prime'),
    (2048, 2**32 + 15, 'prime below 2^32'),
    (2048, 7681, 'not 1 mod 2n'),
])
def test_invalid_ring_parameters(n, q, reason):
    with pytest.raises(RingError, match=reason.split()[0]):
        NegacyclicRing(n, q)


def test_rejects_wrong_operand_shape():
    ring = NegacyclicRing(8, Q)
    with pytest.raises(RingError):
        ring.ntt(np.zeros(16, dtype=np.uint64))
    with pytest.raises(RingError):
        ring.ntt(np.zeros(8, dtype=np.int64))


def test_primality_and_roots():
    assert is_prime(Q) and is_prime(12289) and is_prime(2**31 - 1)
    assert not is_prime(Q - 2) and not is_prime(561) and not is_prime(3215031751)
    psi = primitive_root_of_unity(4096, Q)
    assert pow(psi, 2048, Q) == Q - 1
