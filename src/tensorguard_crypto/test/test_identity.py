"""Ed25519 identities: signatures verify, and fail under another key, context or message; the id grammar;
weak public keys (small order, mixed order, non-canonical) are refused."""
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tensorguard_crypto import wire
from tensorguard_crypto.fleet import FleetPaths
from tensorguard_crypto.identity import (
    ID_PATTERN,
    MAX_ID_CHARS,
    Identity,
    InvalidId,
    InvalidPublicKey,
    Role,
    SignatureInvalid,
    WeakPublicKey,
    check_id,
    check_public_key_strength,
    fingerprint,
    verify_signature,
)


def test_signature_verifies_with_public_key():
    identity = Identity.generate('robot_1', Role.ROBOT)
    signature = identity.sign(b'UpdatePackage', b'payload')
    verify_signature(identity.public_key_bytes(), b'UpdatePackage', b'payload', signature)
    assert len(signature) == 64 and len(identity.public_key_bytes()) == 32


@pytest.mark.parametrize('context, message', [(b'ModelPackage', b'payload'), (b'UpdatePackage', b'payloaD')])
def test_signature_bound_to_context_and_message(context, message):
    identity = Identity.generate('robot_1')
    signature = identity.sign(b'UpdatePackage', b'payload')
    with pytest.raises(SignatureInvalid):
        verify_signature(identity.public_key_bytes(), context, message, signature)


def test_signature_fails_under_other_key():
    signature = Identity.generate('a').sign(b'ctx', b'm')
    with pytest.raises(SignatureInvalid):
        verify_signature(Identity.generate('b').public_key_bytes(), b'ctx', b'm', signature)


@pytest.mark.parametrize('public_key', [b'', b'\x00' * 31, b'\x00' * 33, 'not-bytes'])
def test_invalid_public_key_rejected(public_key):
    with pytest.raises(InvalidPublicKey):
        verify_signature(public_key, b'ctx', b'm', b'\x00' * 64)


def test_repr_never_shows_private_key():
    identity = Identity.generate('robot_1')
    seed = identity.private_key.private_bytes_raw()
    assert seed.hex() not in repr(identity) and 'private_key' not in repr(identity)
    assert len(fingerprint(identity.public_key_bytes())) == 16


# --- Ids: one grammar for robots, keys and anything that becomes a path (review issue 10, finding 1) ---

BAD_IDS = ['../x', 'a/b', 'Robot', '.', '', 'r' * 64, '..', 'robot.1', 'robot:1', 'ops@site', '-robot', '_robot',
           'robot_1\n', 'robot 1', '/abs']


@pytest.mark.parametrize('value', ['robot_1', 'a', '0', 'key-service', 'r' * 63])
def test_check_id_accepts_the_grammar(value):
    assert check_id(value, 'robot id') == value and ID_PATTERN.fullmatch(value) and MAX_ID_CHARS == 63


@pytest.mark.parametrize('value', BAD_IDS + [5, None, b'robot_1'])
def test_check_id_refuses_path_like_and_malformed_ids(value):
    with pytest.raises(InvalidId, match='robot id') as info:
        check_id(value, 'robot id')
    assert info.value.reason == 'invalid_id'


def test_wire_uses_the_same_grammar():
    """Update files are named after the robot id on the wire (`updates/<robot_id>.tgu`): the wire
    must refuse exactly what `check_id` refuses."""
    assert wire.ID_PATTERN is ID_PATTERN and wire.MAX_ID_CHARS == MAX_ID_CHARS


@pytest.mark.parametrize('value', BAD_IDS)
def test_fleet_paths_refuse_ids_before_building_a_path(tmp_path, value):
    """Before the fix, `robot_dir('../x')` was a directory outside `robots/` and enrolment wrote there."""
    paths = FleetPaths(tmp_path / 'fleet')
    with pytest.raises(InvalidId):
        paths.robot_dir(value)
    with pytest.raises(InvalidId):
        paths.server_key(value)
    assert paths.robot_dir('robot_1') == tmp_path / 'fleet' / 'robots' / 'robot_1'


# --- Weak Ed25519 public keys (finding 2) ---
# An independent affine implementation of edwards25519 (RFC 8032 section 5.1) to compute attack points,
# so the test does not rely on the code under test.

P = 2 ** 255 - 19
D = -121665 * pow(121666, -1, P) % P
L = 2 ** 252 + 27742317777372353535851937790883648493
IDENTITY_POINT = (0, 1)


def _add(first, second):
    (x1, y1), (x2, y2) = first, second
    t = D * x1 * x2 * y1 * y2 % P
    return (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P


def _mul(scalar, point):
    result = IDENTITY_POINT
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point, scalar = _add(point, point), scalar >> 1
    return result


def _encode(point):
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, 'little')


def _decode(data):
    y = int.from_bytes(data, 'little') & ((1 << 255) - 1)
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    assert (x * x - x2) % P == 0
    return (P - x if x & 1 != data[31] >> 7 else x), y


def _torsion_points():
    """The 8 points of order dividing 8: the multiples of an order-8 point [L]Q for a curve point Q."""
    for y in range(2, 100):
        x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
        if pow(x2, (P - 1) // 2, P) != 1:
            continue
        generator = _mul(L, _decode(y.to_bytes(32, 'little')))
        if _mul(4, generator) != IDENTITY_POINT:
            points = [_mul(k, generator) for k in range(8)]
            assert len(set(points)) == 8 and all(_mul(8, point) == IDENTITY_POINT for point in points)
            return points
    raise AssertionError('no point of order 8 found')


SMALL_ORDER_KEYS = [_encode(point) for point in _torsion_points()]


def mixed_order_key() -> bytes:
    """A real public key plus a point of order 8: OpenSSL accepts it, it is not in the prime-order subgroup."""
    valid = _decode(Identity.generate('robot_1').public_key_bytes())
    return _encode(_add(valid, _torsion_points()[1]))


def non_canonical_keys() -> list[bytes]:
    """Encodings with y >= p (y + p for y < 19) and the identity with the sign bit set (x = 0)."""
    return [((y + P) | sign << 255).to_bytes(32, 'little') for y in range(19) for sign in (0, 1)] + \
        [(1 | 1 << 255).to_bytes(32, 'little')]


def test_small_order_public_key_lets_a_forged_signature_verify_any_message():
    """The attack is real on this OpenSSL (3.x/4.x through `cryptography`): with the identity point as
    public key, the signature R = identity, S = 0 verifies every message, because [S]B = R + [k]A holds
    as O = O + O. OpenSSL also accepts every non-canonical encoding (y >= p) at parse time."""
    identity_key = _encode(IDENTITY_POINT)
    forged = identity_key + bytes(32)
    for message in (b'any message', b'another message'):
        Ed25519PublicKey.from_public_bytes(identity_key).verify(forged, message)
    verify_signature(identity_key, b'UpdatePackage', b'a forged update', forged)
    for key in non_canonical_keys() + [mixed_order_key()] + SMALL_ORDER_KEYS:
        Ed25519PublicKey.from_public_bytes(key)
    with pytest.raises(WeakPublicKey):
        check_public_key_strength(identity_key)


@pytest.mark.parametrize('index', range(8))
def test_every_small_order_point_is_refused(index):
    with pytest.raises(WeakPublicKey, match='small order') as info:
        check_public_key_strength(SMALL_ORDER_KEYS[index])
    assert info.value.reason == 'weak_public_key' and isinstance(info.value, InvalidPublicKey)


def test_mixed_order_and_non_canonical_keys_are_refused():
    """No point of the prime-order subgroup has y < 19 (every such y below is weak or off the curve),
    so a non-canonical encoding (y + p) is never that of a valid key: all of them are refused."""
    with pytest.raises(WeakPublicKey, match='prime-order subgroup'):
        check_public_key_strength(mixed_order_key())
    for key in non_canonical_keys():
        with pytest.raises(WeakPublicKey, match='non-canonical'):
            check_public_key_strength(key)
    for y in range(19):
        with pytest.raises(InvalidPublicKey):
            check_public_key_strength(y.to_bytes(32, 'little'))


def test_real_keys_pass_the_strength_check():
    for _ in range(20):
        public_key = Identity.generate('robot_1').public_key_bytes()
        check_public_key_strength(public_key)
        assert _mul(L, _decode(public_key)) == IDENTITY_POINT
    with pytest.raises(InvalidPublicKey):
        check_public_key_strength(b'\x00' * 31)
