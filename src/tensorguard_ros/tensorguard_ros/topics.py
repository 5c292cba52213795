"""Names of the fleet-wide TensorGuard topics and services (absolute, outside robot namespaces).

Robot-local streams (observations, actions, episode events, status) are relative names, so a
robot's namespace (``/robot_1/...``) applies to them; these fleet-wide ones are shared by all robots.
"""

ROUND_CONFIG = '/tensorguard/round_config'
ENCRYPTED_UPDATES = '/tensorguard/encrypted_updates'
MODEL_UPDATES = '/tensorguard/model_updates'
FLEET_STATUS = '/tensorguard/fleet_status'
DECRYPT_AGGREGATE = '/tensorguard/key_service/decrypt_aggregate'
ISSUE_ROUND_KEY = '/tensorguard/key_service/issue_round_key'
TRIGGER_ROUND = '/tensorguard/trigger_round'
REVOKE_ROBOT = '/tensorguard/revoke_robot'
RUN_ROUND = '/tensorguard/run_round'
DIAGNOSTICS = '/diagnostics'  # the standard diagnostics topic
