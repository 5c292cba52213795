"""ROS glue shared by TensorGuard edge and server nodes: topics, QoS, message conversions, /diagnostics health."""
