"""TensorGuard robot side: the edge node around the ROS-free `EdgeClient`."""
