"""TensorGuard simulation: simulated robots, the simulated fleet runner, its monitor and the ROS-free replay."""
