# TensorGuard robot image: the edge node on the official ROS 2 Kilted image. The simulated robot
# (`robot.launch.py simulate:=true`) is in tensorguard_sim: build `--packages-up-to tensorguard_sim` for it.
# Untested here (no Docker engine on the development machines); see docker/README.md.
FROM ros:kilted

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip python3-venv python3-numpy \
      python3-cryptography python3-msgpack python3-yaml ros-kilted-diagnostic-msgs \
 && rm -rf /var/lib/apt/lists/*

# torch and Meta-World are not in Ubuntu's archive: a venv that also sees the system's ROS packages.
# TORCH_PIP_ARGS: extra pip arguments for torch, e.g. your mirror's CPU-only index (plain `torch`
# from PyPI is the large CUDA build).
ARG TORCH_PIP_ARGS=""
RUN python3 -m venv --system-site-packages /opt/tensorguard-venv \
 && /opt/tensorguard-venv/bin/pip install --no-cache-dir $TORCH_PIP_ARGS torch==2.13.0 \
 && /opt/tensorguard-venv/bin/pip install --no-cache-dir metaworld==3.1.1 tqdm python-pkcs11==0.10.1

WORKDIR /ws
COPY src/ src/
COPY config/ config/
COPY launch/ launch/
RUN . /opt/ros/kilted/setup.sh \
 && colcon build --packages-up-to tensorguard_edge --cmake-args -DBUILD_TESTING=OFF

COPY docker/entrypoint.sh /entrypoint.sh
ENTRYPOINT ["/entrypoint.sh"]
CMD ["bash"]
