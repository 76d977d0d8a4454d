#!/usr/bin/env bash
# Train on every local device (GPUs, TPU cores, or N forced CPU devices).
#
#   launch/local.sh configs/quickstart.py runs/quickstart [--config.FIELD=VALUE ...]
#   CPU_DEVICES=8 launch/local.sh configs/quickstart.py runs/qs8   # 8 CPU devices
#
# dpjax pmaps the step over all local devices; the logical batch, the noise
# (once per logical batch) and hence ε do not depend on the device count.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
if [ -n "${CPU_DEVICES:-}" ]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi
exec dpjax train --config "$config" --workdir "$workdir" "$@"
