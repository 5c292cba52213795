"""Wire records: round trips, canonical signed bytes, strict decoding with a distinct error per failure."""
import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path

import msgpack
import pytest

from tensorguard_crypto.identity import Identity, Role, SignatureInvalid
from tensorguard_crypto.wire import (
    AggregateRequest,
    AggregateResult,
    ExpertSlice,
    FieldSetMismatch,
    FieldTooLarge,
    FieldTypeError,
    FieldValueError,
    MalformedEncoding,
    ModelPackage,
    PackageTooLarge,
    RoundConfigPackage,
    UnsignedRecord,
    UnsupportedSchemaVersion,
    UpdatePackage,
    WireFormatError,
    WrongRecordKind,
    model_package,
)

sys.path.insert(0, str(Path(__file__).parent))
from crypto_test_support import make_round_config, make_update  # noqa: E402


@pytest.fixture(scope='module')
def server():
    return Identity.generate('server', Role.SERVER)


@pytest.fixture(scope='module')
def robot():
    return Identity.generate('robot_1', Role.ROBOT)


def test_update_round_trip_and_signature(server, robot):
    package = make_update(robot, make_round_config(server))
    decoded = UpdatePackage.deserialize(package.serialize())
    assert decoded == package
    decoded.verify_signature(robot.public_key_bytes())
    assert decoded.safety_stats.dp_epsilon_consumed == pytest.approx(0.37)
    assert decoded.serialize() == package.serialize()


def test_contribution_verifies_with_update_signature_without_bodies(server, robot):
    package = make_update(robot, make_round_config(server))
    contribution = package.contribution()
    contribution.verify_signature(robot.public_key_bytes())
    assert contribution.bodies_sha256 == hashlib.sha256(package.bodies).digest()
    forged = dataclasses.replace(contribution, bodies_sha256=hashlib.sha256(b'other').digest())
    with pytest.raises(SignatureInvalid):
        forged.verify_signature(robot.public_key_bytes())


@pytest.mark.parametrize('field, value', [
    ('robot_id', 'robot_2'), ('round_id', 8), ('round_seed', b'\x01' * 32), ('config_digest', b'\x02' * 32),
    ('model_version', 4), ('bodies', b'x'), ('key_ciphertext', b'y'), ('body_chunks', 3)])
def test_canonical_bytes_bind_every_header_field(server, robot, field, value):
    package = make_update(robot, make_round_config(server))
    changed = dataclasses.replace(package, **{field: value})
    assert changed.canonical_bytes() != package.canonical_bytes()
    with pytest.raises(SignatureInvalid):
        changed.verify_signature(robot.public_key_bytes())


def test_round_config_digest_and_model_package_round_trip(server):
    config = make_round_config(server)
    assert RoundConfigPackage.deserialize(config.serialize()).config_digest() == config.config_digest()
    assert config.config_digest() != make_round_config(server).config_digest()
    model = model_package(4, 3, 7, os.urandom(5000), 'deploy', server.key_id, time.time()).signed_by(server)
    decoded = ModelPackage.deserialize(model.serialize())
    decoded.verify_signature(server.public_key_bytes())
    assert decoded == model


def test_aggregate_exchange_round_trip(server, robot):
    config = make_round_config(server)
    aggregator = Identity.generate('aggregator', Role.AGGREGATOR)
    request = AggregateRequest(round_id=config.round_id, config_digest=config.config_digest(),
                               summed_bodies=os.urandom(300),
                               contributions=(make_update(robot, config).contribution(),),
                               signer_key_id='aggregator', created_at=time.time()).signed_by(aggregator)
    decoded = AggregateRequest.deserialize(request.serialize())
    assert decoded == request
    decoded.contributions[0].verify_signature(robot.public_key_bytes())
    result = AggregateResult(round_id=7, config_digest=config.config_digest(), aggregate=b'sum',
                             contributors=('robot_1',), signer_key_id='key_service',
                             created_at=time.time()).signed_by(Identity.generate('key_service', Role.KEY_SERVICE))
    assert AggregateResult.deserialize(result.serialize()) == result


def test_model_digest_must_match():
    with pytest.raises(FieldValueError):
        ModelPackage(model_version=1, parent_version=0, round_id=1, parameters=b'abc',
                     parameters_sha256=b'\x00' * 32, gate_decision='deploy', signer_key_id='s', created_at=1.0)


@pytest.mark.parametrize('field, value, error', [
    ('robot_id', 'r' * 129, FieldTooLarge), ('robot_id', 'bad id', FieldValueError),
    ('robot_id', 5, FieldTypeError), ('round_id', -1, FieldValueError), ('round_id', True, FieldTypeError),
    ('round_seed', b'\x00' * 31, FieldValueError), ('created_at', float('nan'), FieldValueError),
    ('key_ciphertext', b'\x00' * (16 * 1024 * 1024 + 1), FieldTooLarge),
    ('expert_metadata', (ExpertSlice(expert_id=0, num_coordinates=1, offset=0),) * 4097, FieldTooLarge)])
def test_construction_validates_every_field(server, robot, field, value, error):
    package = make_update(robot, make_round_config(server))
    with pytest.raises(error):
        dataclasses.replace(package, **{field: value})


def _envelope(package: UpdatePackage) -> dict:
    return msgpack.unpackb(package.serialize(), raw=False)


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_oversized_field_on_the_wire_is_field_too_large(server, robot):
    envelope = _envelope(make_update(robot, make_round_config(server)))
    envelope['record']['robot_id'] = 'r' * 200
    with pytest.raises(FieldTooLarge):
        UpdatePackage.deserialize(_pack(envelope))


def test_total_size_cap_checked_before_decoding(server, robot):
    data = make_update(robot, make_round_config(server), bodies_bytes=5000).serialize()
    with pytest.raises(PackageTooLarge):
        UpdatePackage.deserialize(data, max_bytes=4000)
    with pytest.raises(PackageTooLarge):
        UpdatePackage.deserialize(b'\xc6\xff\xff\xff\xff' + b'\x00' * 100, max_bytes=50)


def test_envelope_errors_are_distinct(server, robot):
    package = make_update(robot, make_round_config(server))
    envelope = _envelope(package)
    with pytest.raises(UnsupportedSchemaVersion):
        UpdatePackage.deserialize(_pack({**envelope, 'schema': 1}))
    with pytest.raises(WrongRecordKind):
        UpdatePackage.deserialize(_pack({**envelope, 'kind': 'ModelPackage'}))
    with pytest.raises(WrongRecordKind):
        ModelPackage.deserialize(package.serialize())
    unsigned = dataclasses.replace(package, signature=b'')
    with pytest.raises(UnsignedRecord):
        UpdatePackage.deserialize(unsigned.serialize())


def test_field_set_and_order_are_strict(server, robot):
    envelope = _envelope(make_update(robot, make_round_config(server)))
    record = envelope['record']
    extra = {**record, 'extra': 1}
    missing = {k: v for k, v in record.items() if k != 'bodies'}
    reordered = dict(reversed(list(record.items())))
    for body in (extra, missing, reordered):
        with pytest.raises(FieldSetMismatch):
            UpdatePackage.deserialize(_pack({**envelope, 'record': body}))


def test_duplicate_map_key_rejected(server, robot):
    data = make_update(robot, make_round_config(server)).serialize()
    # The envelope map {schema, kind, record}: re-encode with 'schema' twice (4 entries, decodes to 3 keys).
    envelope = _envelope(make_update(robot, make_round_config(server)))
    duplicated = b'\x84' + _pack('schema') + _pack(1) + _pack('schema') + _pack(1) + _pack('kind') + \
        _pack('UpdatePackage') + _pack('record') + _pack(envelope['record'])
    assert data[0] == 0x83
    with pytest.raises(FieldSetMismatch):
        UpdatePackage.deserialize(duplicated)


@pytest.mark.parametrize('raw', [
    b'\xca\x00\x00\x00\x00',            # float32 is never produced by serialize()
    b'\xcc\x05',                        # 5 as uint8 instead of positive fixint
    b'\xd9\x01a',                       # 1-char string as str8 instead of fixstr
    b'\xdc\x00\x01\x00',                # 1-item array as array16
    b'\xd4\x01\x00',                    # ext types are refused
    b'\xc1',                            # never-used byte
    b'\x93\x01\x02',                    # truncated array
    b'\x01\x02',                        # trailing bytes
    b'\xdd\xff\xff\xff\xff',            # array claiming 2^32-1 items in 5 bytes
    b'\x91' * 20 + b'\x00',             # nesting deeper than any record
])
def test_non_canonical_or_hostile_msgpack_is_malformed(raw):
    with pytest.raises(MalformedEncoding):
        UpdatePackage.deserialize(raw)


@pytest.mark.parametrize('data', [None, 'text', 12, [1, 2]])
def test_non_bytes_input_is_a_wire_error(data):
    with pytest.raises(WireFormatError):
        UpdatePackage.deserialize(data)
