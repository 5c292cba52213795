"""rqt plugin for a TensorGuard fleet: fleet panel, robots table, confirmed actions."""
