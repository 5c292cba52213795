"""How TensorGuard's signed records travel in Flower's legacy messages (FitIns, FitRes).

Flower's `Parameters` are a list of byte strings with a type tag; TensorGuard's records are
already signed, versioned byte strings, so each one travels as a single opaque tensor:

    FitIns.parameters  [ModelPackage bytes], tensor_type MODEL_TENSOR   (signed by the model server)
    FitIns.config      {ROUND_CONFIG: RoundConfigPackage bytes}         (signed by the aggregator)
    FitRes.parameters  [UpdatePackage bytes], tensor_type UPDATE_TENSOR (signed by the robot), or
                       no tensor and FitRes.metrics {REFUSED: reason} when the robot refused the round

A robot's reply carries nothing else about it: `num_examples` is always 0, because the size of
its data would describe it outside the DP guarantee (the same rule as `SafetyStats` on the wire).
"""
from __future__ import annotations

MODEL_TENSOR = 'tensorguard/model-package'
UPDATE_TENSOR = 'tensorguard/update-package'
ROUND_CONFIG = 'round_config'
REFUSED = 'refused'
