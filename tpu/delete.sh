#!/usr/bin/env bash
# Deletes a TPU VM, or a queued resource together with its TPU. See --help.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat << EOF2
Usage: tpu/delete.sh --name NAME --zone ZONE [--queued] [--yes] [--dry-run]

Deletes the TPU VM (\`gcloud compute tpus tpu-vm delete\`), or with --queued the queued resource
NAME and the TPU it holds (\`gcloud compute tpus queued-resources delete --force\`). Billing stops
once it is gone; data in Cloud Storage (workdirs, checkpoints) stays, the workers' disks do not.

$TPU_FLAGS_HELP
  --queued          NAME is a queued resource (made by tpu/create.sh --queued)
  --yes             do not ask for confirmation (gcloud --quiet)
EOF2
}

QUEUED=0
YES=0

parse_script_flag() {
  SHIFT_BY=0
  case "$1" in
    --queued) QUEUED=1; SHIFT_BY=1 ;;
    --yes) YES=1; SHIFT_BY=1 ;;
  esac
}
parse_flags "$@"

require_tpu
location_flags
if ((QUEUED)); then
  command=(gcloud compute tpus queued-resources delete "$TPU_NAME" "${LOCATION_FLAGS[@]}" --force)
else
  command=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION_FLAGS[@]}")
fi
if ((YES)); then command+=(--quiet); fi
run "${command[@]}"
