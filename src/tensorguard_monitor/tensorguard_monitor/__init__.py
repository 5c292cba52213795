"""Watching a TensorGuard fleet: one ROS-free model of fleet state, the web dashboard and Prometheus metrics."""
