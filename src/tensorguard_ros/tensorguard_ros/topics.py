"""Names of the TensorGuard topics and services every node shares.

Fleet-wide names are absolute (``/tensorguard/...``), shared by all robots. A robot's own streams
are relative names, so its namespace (``/robot_1/...``) applies: its drivers and teleoperation
stack publish them and its edge node records from them.

Robot stream conventions:
- ``observation``, ``action`` (``std_msgs/Float32MultiArray``): ``layout.dim[0]`` is the vector
  (label ``observation.state`` / ``action``), ``layout.dim[1]`` is a size-1 dimension labelled
  ``episode`` whose ``stride`` carries the episode number, and ``layout.data_offset`` is the frame
  index within the episode. Topics are not ordered against each other, so every frame names its episode.
- ``episode_events`` (``std_msgs/String``, JSON): ``{"event": "begin", "episode": i, "task": t}`` and
  ``{"event": "end", "episode": i, "frames": n, "success": s}``.
- ``demonstrations`` (``tensorguard_msgs/Demonstration``): whole episodes, instead of the three above.
"""

ROUND_CONFIG = '/tensorguard/round_config'
ENCRYPTED_UPDATES = '/tensorguard/encrypted_updates'
MODEL_UPDATES = '/tensorguard/model_updates'
FLEET_STATUS = '/tensorguard/fleet_status'
OUTCOME_REPORTS = '/tensorguard/outcome_reports'
DECRYPT_AGGREGATE = '/tensorguard/key_service/decrypt_aggregate'
ISSUE_ROUND_KEY = '/tensorguard/key_service/issue_round_key'
TRIGGER_ROUND = '/tensorguard/trigger_round'
REVOKE_ROBOT = '/tensorguard/revoke_robot'
RUN_ROUND = '/tensorguard/run_round'
DIAGNOSTICS = '/diagnostics'  # the standard diagnostics topic

# A robot's streams (relative names; defaults of the edge node's ``*_topic`` parameters).
OBSERVATION = 'observation'
ACTION = 'action'
EPISODE_EVENTS = 'episode_events'
DEMONSTRATIONS = 'demonstrations'
