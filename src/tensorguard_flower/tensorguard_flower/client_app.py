"""The Flower `ClientApp` of TensorGuard robots: the edge client's round behind Flower's `fit` (ROS-free).

Every `fit` opens the robot's `EdgeClient` (tensorguard_edge.client, the edge node's own core) on the
robot's state directory, where its demonstration store, signed model, privacy ledger and
error-feedback residual live, so nothing of a robot stays in a Flower worker between rounds. It
applies the round's signed model if it is newer than the robot's, then calls
`EdgeClient.process_round` on the signed round config: the same checks (signatures against the
pinned server keys, round binding, the DP and lattice parameters its own configuration implies),
the same hard stop before any privacy is spent, training, random-k with error feedback, clipping,
Skellam noise, encryption, sealing, signing and the ledger written before the update leaves. The
reply carries the signed UpdatePackage, or no update and the reason the robot refused the round.

Simulated robots are Flower's virtual SuperNodes: partition i is the i-th robot's `EdgeSettings`
(`robot_settings` points them at the identity key and pinned trust file that `tensorguard robot
install` puts in ``<fleet>/robots/<id>/``); the key file's passphrase comes from
``TENSORGUARD_KEY_PASSPHRASE``, as for the edge node.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from flwr.app import Context
from flwr.client import Client, ClientApp
from flwr.common import Code, FitIns, FitRes, Parameters, Status

from tensorguard_crypto.fleet import ROBOT_KEY_FILE, TRUST_FILE, FleetPaths
from tensorguard_crypto.refusal import Reason
from tensorguard_edge.client import EdgeClient, EdgeSettings, ModelRefused, RoundRefused
from tensorguard_flower.messages import MODEL_TENSOR, REFUSED, ROUND_CONFIG, UPDATE_TENSOR


def _refusal(reason: str, detail: str) -> FitRes:
    return FitRes(status=Status(code=Code.OK, message=detail), parameters=Parameters(tensors=[], tensor_type=''),
                  num_examples=0, metrics={REFUSED: str(reason)})


class TensorGuardClient(Client):
    """One robot's Flower client over its `EdgeClient` (see module docstring)."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings

    def edge_client(self) -> EdgeClient:
        """The robot's edge client, opened on its state directory (holds the store's writer lock)."""
        return EdgeClient(self.settings)

    def fit(self, ins: FitIns) -> FitRes:
        """The robot's signed, encrypted update for the round in `ins`, or its refusal."""
        round_config = ins.config.get(ROUND_CONFIG)
        if not isinstance(round_config, bytes):
            return _refusal(Reason.MALFORMED, 'the round carries no signed round config')
        client = self.edge_client()
        try:
            if ins.parameters.tensor_type == MODEL_TENSOR and len(ins.parameters.tensors) == 1:
                try:
                    client.apply_model(ins.parameters.tensors[0])
                except ModelRefused as exc:
                    if exc.reason != Reason.NOT_NEWER:
                        return _refusal(exc.reason, f'model refused: {exc}')
            package = client.process_round(round_config)
            spent = client.status().epsilon_spent
        except RoundRefused as exc:
            return _refusal(exc.reason, str(exc))
        finally:
            client.close()
        return FitRes(status=Status(code=Code.OK, message='update'),
                      parameters=Parameters(tensors=[package.serialize()], tensor_type=UPDATE_TENSOR),
                      num_examples=0, metrics={'epsilon_spent': spent})


def robot_settings(fleet_dir: str, robot_id: str, shared: EdgeSettings) -> EdgeSettings:
    """`shared` for robot `robot_id` of the fleet in `fleet_dir`: its key, trust file and state directory."""
    robot = FleetPaths(Path(fleet_dir)).robot_dir(robot_id)
    return dataclasses.replace(shared, robot_id=robot_id, state_dir=str(robot / 'state'),
                               key_path=str(robot / ROBOT_KEY_FILE), trust_path=str(robot / TRUST_FILE))


def client_app(robots: Sequence[EdgeSettings], client_class: type[TensorGuardClient] = TensorGuardClient
               ) -> ClientApp:
    """A ClientApp whose virtual SuperNode with partition id i is the robot configured by `robots[i]`
    (each robot's own settings: its identity, state directory and privacy budget)."""
    robots = tuple(robots)

    def client_fn(context: Context) -> Client:
        torch.set_num_threads(1)
        return client_class(robots[int(context.node_config['partition-id'])]).to_client()

    return ClientApp(client_fn=client_fn)
