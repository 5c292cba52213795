# Source this file to use the TensorGuard workspace built by scripts/bootstrap:
#   source scripts/env.sh
# It activates .venv (the ROS 2 prefix), sources the colcon install space and puts the venv back on
# AMENT_PREFIX_PATH (the workspace setup script replaces it, and rclpy would then miss the type
# support of the venv's own message packages).
_tg_restore_nounset="$(set +o | grep nounset)"
set +u  # the colcon and venv setup scripts read unset variables
_tg_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$_tg_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# shellcheck disable=SC1091
source "$_tg_root/install/setup.bash"
export AMENT_PREFIX_PATH="$AMENT_PREFIX_PATH:$VIRTUAL_ENV"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export TENSORGUARD_ROOT="$_tg_root"
eval "$_tg_restore_nounset"
unset _tg_root _tg_restore_nounset
