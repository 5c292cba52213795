"""TensorGuard crypto: secure aggregation, Skellam DP, identities, wire format, KMS. Never imports rclpy."""
