"""TensorGuard policy on the robot: a ROS-free action guard and controller, and the thin lifecycle node around them."""
