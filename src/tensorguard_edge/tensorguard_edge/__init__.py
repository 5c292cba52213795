"""TensorGuard robot side: the edge node and a simulated Meta-World robot (ROS 2 nodes)."""
