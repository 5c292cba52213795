"""verify_deployed_model: only a model signed by the fleet's server, newer than what the robot holds,
whose weights load with the robot's dimensions, is ever handed to anything that runs it."""
import dataclasses
import hashlib

import pytest

from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.verify import PinnedKeys
from tensorguard_crypto.wire import model_package
from tensorguard_learning.deployment import ModelRefused, verify_deployed_model

SERVER = Identity.generate('server', Role.SERVER)
TRUST = PinnedKeys({'server': (Role.SERVER, SERVER.public_key_bytes())})


def signed_model(policy, version: int, decision: str = 'deploy', signer: Identity = SERVER, parameters=None):
    """A ModelPackage of `policy` as the aggregator publishes it (parent = version - 1)."""
    return model_package(model_version=version, parent_version=version - 1, round_id=version,
                         parameters=policy.state_bytes() if parameters is None else parameters,
                         gate_decision=decision, signer_key_id=signer.key_id, created_at=1.0).signed_by(signer)


def refusal(blob: bytes, **kwargs) -> str:
    with pytest.raises(ModelRefused) as refused:
        verify_deployed_model(blob, TRUST, **kwargs)
    return refused.value.reason


def test_a_fleet_signed_newer_model_is_accepted_with_its_policy(tiny_policy):
    model = verify_deployed_model(signed_model(tiny_policy, 3).serialize(), TRUST, newest_version=2, dims=(39, 4))
    assert model.version == 3 and model.rolled_back_version is None
    assert model.policy.base_version == tiny_policy.base_version


def test_forged_parameters_under_the_servers_signature_are_refused(tiny_policy):
    package = signed_model(tiny_policy, 3)
    other = tiny_policy.clone()
    other.adapter.router_logits.data += 1.0
    forged_bytes = other.state_bytes()
    swapped = dataclasses.replace(package, parameters=forged_bytes,
                                  parameters_sha256=hashlib.sha256(forged_bytes).digest())
    assert refusal(swapped.serialize()) == 'bad_signature'
    tampered = bytearray(package.serialize())
    tampered[tampered.find(package.parameters) + 100] ^= 1  # digest no longer matches
    assert refusal(bytes(tampered)) == 'malformed'
    assert refusal(dataclasses.replace(package, model_version=9).serialize()) == 'bad_signature'


def test_a_model_re_signed_by_a_key_outside_the_trust_anchors_is_refused(tiny_policy):
    stranger = Identity.generate('server', Role.SERVER)  # same name, another fleet's key
    assert refusal(signed_model(tiny_policy, 3, signer=stranger).serialize()) == 'bad_signature'
    other_name = Identity.generate('other_fleet_server', Role.SERVER)
    assert refusal(signed_model(tiny_policy, 3, signer=other_name).serialize()) == 'unknown_signer'
    robot_key = Identity('server', Role.ROBOT, SERVER.private_key)
    trust_as_robot = PinnedKeys({'server': (Role.ROBOT, SERVER.public_key_bytes())})
    with pytest.raises(ModelRefused) as refused:
        verify_deployed_model(signed_model(tiny_policy, 3, signer=robot_key).serialize(), trust_as_robot)
    assert refused.value.reason == 'unknown_signer'


def test_replayed_older_and_rolled_back_versions_are_refused(tiny_policy):
    canary = signed_model(tiny_policy, 4, 'canary')
    rollback = verify_deployed_model(signed_model(tiny_policy, 5, 'rollback').serialize(), TRUST, newest_version=4)
    assert rollback.rolled_back_version == 4
    assert refusal(canary.serialize(), newest_version=rollback.version) == 'stale_model'
    assert refusal(signed_model(tiny_policy, 2).serialize(), newest_version=5) == 'stale_model'
    assert refusal(signed_model(tiny_policy, 5, 'rollback').serialize(), newest_version=5) == 'not_newer'


def test_parameters_that_do_not_load_or_do_not_fit_the_robot_are_refused(tiny_policy):
    assert refusal(signed_model(tiny_policy, 3, parameters=b'TGPOL1 not a policy').serialize()) == 'malformed_model'
    assert refusal(signed_model(tiny_policy, 3).serialize(), dims=(12, 4)) == 'shape_mismatch'
    assert refusal(b'\x00' * 64) == 'malformed'
