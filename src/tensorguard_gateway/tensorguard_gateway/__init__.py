"""TensorGuard Zenoh gateway: key scheme, loop guard, screening, the gateway node and the fleet router."""
