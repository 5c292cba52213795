"""TensorGuard learning: demonstrations, MoE adapter policy, training, compression, evaluation. Never imports rclpy."""
