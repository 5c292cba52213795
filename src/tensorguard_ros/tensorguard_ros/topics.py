"""Names of the TensorGuard topics and services every node shares.

Fleet-wide names are absolute (``/tensorguard/...``), shared by all robots. A robot's own names
are relative, so its namespace (``/robot_1/...``) applies. The robot's input topics are whatever
its drivers and controllers already publish, chosen by the edge node's ``inputs.*`` parameters
(docs/robot-inputs.md); the names here are the edge node's episode services and markers.
"""

ROUND_CONFIG = '/tensorguard/round_config'
ENCRYPTED_UPDATES = '/tensorguard/encrypted_updates'
MODEL_UPDATES = '/tensorguard/model_updates'
FLEET_STATUS = '/tensorguard/fleet_status'
OUTCOME_REPORTS = '/tensorguard/outcome_reports'
SITE_PARTIAL_SUMS = '/tensorguard/site_partial_sums'  # site aggregation only (docs/site-aggregation.md)
DECRYPT_AGGREGATE = '/tensorguard/key_service/decrypt_aggregate'
ISSUE_ROUND_KEY = '/tensorguard/key_service/issue_round_key'
TRIGGER_ROUND = '/tensorguard/trigger_round'
REVOKE_ROBOT = '/tensorguard/revoke_robot'
RUN_ROUND = '/tensorguard/run_round'
DIAGNOSTICS = '/diagnostics'  # the standard diagnostics topic

# A robot's episode boundaries (relative names): served and published by its edge node.
START_EPISODE = 'start_episode'
END_EPISODE = 'end_episode'
EPISODE_MARKERS = 'episode_markers'
