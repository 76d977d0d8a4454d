#!/usr/bin/env bash
# Run dpjax on every host of a Cloud TPU VM pod slice. JAX detects the TPU
# topology itself (jax.distributed auto-detection), so the same command runs
# on all workers; the workdir must be shared storage (e.g. a gs:// bucket
# mounted with gcsfuse, or a persistent disk) so that every host resumes from
# the same checkpoints.
#
#   launch/tpu_vm.sh TPU_NAME ZONE configs/imagenet_resnet50.py /mnt/runs/in_r50 [--config.X=Y ...]
#
# Requires the gcloud CLI on the machine you launch from, and dpjax installed
# on the TPU VMs (e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all
# --command "pip install -e /path/to/dpjax 'jax[tpu]'"`).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
name=$1; zone=$2; config=$3; workdir=$4; shift 4
extra=$(printf ' %q' "$@")
exec gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all \
  --command "dpjax train --config $(printf %q "$config") --workdir $(printf %q "$workdir")${extra}"
