"""TensorGuard fleet-server side: aggregator, key service, evaluator and gate (ROS 2 nodes)."""
