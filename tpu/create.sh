#!/usr/bin/env bash
# Creates a Cloud TPU VM (or slice), directly or through a queued resource. See --help.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat << EOF
Usage: tpu/create.sh --name NAME --zone ZONE --accelerator-type TYPE [options]

Creates a TPU VM slice with \`gcloud compute tpus tpu-vm create\`, or with --queued a queued resource
(\`gcloud compute tpus queued-resources create\`, the way to get multi-host and Spot capacity: the
request waits in a queue until the slice is free).

$TPU_FLAGS_HELP
  --accelerator-type TYPE  v5litepod-8 | v5litepod-16 | v5litepod-64 | v5litepod-256 (v5e, the number
                           is chips) | v5p-32 | v5p-128 (v5p, the number is TensorCores = 2 x chips)
                           | v6e-N | v4-N
  --runtime-version V      TPU software version; default by family: v5litepod -> v2-alpha-tpuv5-lite,
                           v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e, v4 -> tpu-ubuntu2204-base
  --spot                   Spot capacity: much cheaper, can be preempted at any time
  --preemptible            legacy preemptible TPU (24 h limit); direct creation only
  --queued                 create through a queued resource named NAME (node NAME)
  --reserved               with --queued: use the project's TPU reservation
  --valid-until-duration D with --queued: drop the request if not provisioned within D (e.g. 6h)
  --wait                   with --queued: poll until the slice is ACTIVE (fails if it FAILED)
  --poll-seconds N         with --wait: seconds between polls (default 30)

Example:
  tpu/create.sh --name cm3-v5e --zone us-west4-a --accelerator-type v5litepod-16 --queued --spot --wait
EOF
}

ACCELERATOR_TYPE=""
RUNTIME_VERSION=""
CAPACITY=""
QUEUED=0
RESERVED=0
VALID_UNTIL=""
WAIT=0
POLL_SECONDS=30

parse_script_flag() {
  SHIFT_BY=0
  case "$1" in
    --accelerator-type) need_value "$1" $#; ACCELERATOR_TYPE="$2"; SHIFT_BY=2 ;;
    --runtime-version) need_value "$1" $#; RUNTIME_VERSION="$2"; SHIFT_BY=2 ;;
    --spot | --preemptible)
      [[ -z "$CAPACITY" || "$CAPACITY" == "$1" ]] || die "--spot and --preemptible exclude each other"
      CAPACITY="$1"; SHIFT_BY=1 ;;
    --queued) QUEUED=1; SHIFT_BY=1 ;;
    --reserved) RESERVED=1; SHIFT_BY=1 ;;
    --valid-until-duration) need_value "$1" $#; VALID_UNTIL="$2"; SHIFT_BY=2 ;;
    --wait) WAIT=1; SHIFT_BY=1 ;;
    --poll-seconds) need_value "$1" $#; POLL_SECONDS="$2"; SHIFT_BY=2 ;;
  esac
}
parse_flags "$@"

require_tpu
[[ -n "$ACCELERATOR_TYPE" ]] || die "--accelerator-type is required, e.g. v5litepod-8 or v5p-32"
[[ "$ACCELERATOR_TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  die "--accelerator-type $ACCELERATOR_TYPE is not of the form v5litepod-8 / v5p-32 / v6e-16 / v4-8"
if [[ -z "$RUNTIME_VERSION" ]]; then
  case "$ACCELERATOR_TYPE" in
    v5litepod-*) RUNTIME_VERSION="v2-alpha-tpuv5-lite" ;;
    v5p-*) RUNTIME_VERSION="v2-alpha-tpuv5" ;;
    v6e-*) RUNTIME_VERSION="v2-alpha-tpuv6e" ;;
    v4-*) RUNTIME_VERSION="tpu-ubuntu2204-base" ;;
    *) die "no default runtime version for $ACCELERATOR_TYPE: pass --runtime-version" ;;
  esac
fi
[[ "$POLL_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "--poll-seconds must be a positive integer"
if ((!QUEUED)); then
  ((!RESERVED)) || die "--reserved needs --queued"
  [[ -z "$VALID_UNTIL" ]] || die "--valid-until-duration needs --queued"
  ((!WAIT)) || die "--wait needs --queued (a direct create returns once the TPU exists)"
else
  [[ "$CAPACITY" != "--preemptible" ]] ||
    die "queued resources take --spot (preemptible TPUs are created directly, without --queued)"
  if [[ "$CAPACITY" == "--spot" ]] && ((RESERVED)); then
    die "--spot and --reserved exclude each other"
  fi
fi

location_flags
if ((QUEUED)); then
  command=(gcloud compute tpus queued-resources create "$TPU_NAME" "--node-id=$TPU_NAME"
    "${LOCATION_FLAGS[@]}" "--accelerator-type=$ACCELERATOR_TYPE"
    "--runtime-version=$RUNTIME_VERSION")
  if [[ -n "$CAPACITY" ]]; then command+=("$CAPACITY"); fi
  if ((RESERVED)); then command+=(--reserved); fi
  if [[ -n "$VALID_UNTIL" ]]; then command+=("--valid-until-duration=$VALID_UNTIL"); fi
else
  command=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOCATION_FLAGS[@]}"
    "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
  if [[ -n "$CAPACITY" ]]; then command+=("$CAPACITY"); fi
fi
run "${command[@]}"

if ((QUEUED && WAIT)); then
  describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${LOCATION_FLAGS[@]}"
    "--format=value(state.state)")
  if ((DRY_RUN)); then
    note "repeated every $POLL_SECONDS s until the state is ACTIVE:"
    run "${describe[@]}"
    exit 0
  fi
  while true; do
    state="$("${describe[@]}")"
    case "$state" in
      ACTIVE) echo "queued resource $TPU_NAME is ACTIVE: run tpu/setup.sh next"; break ;;
      FAILED | SUSPENDED | SUSPENDING)
        echo "error: queued resource $TPU_NAME is $state; see: gcloud compute tpus" \
          "queued-resources describe $TPU_NAME --zone=$TPU_ZONE" >&2
        exit 1 ;;
      *) echo "queued resource $TPU_NAME: ${state:-unknown}; next check in $POLL_SECONDS s" ;;
    esac
    sleep "$POLL_SECONDS"
  done
elif ((QUEUED && !DRY_RUN)); then
  echo "queued: gcloud compute tpus queued-resources describe $TPU_NAME --zone=$TPU_ZONE shows" \
    "when it is ACTIVE"
fi
