"""TensorGuard rounds on Flower: `strategy.TensorGuardStrategy` and `client_app.client_app` (ROS-free)."""
