#!/usr/bin/env bash
# Runs one command on every worker of a TPU VM, in ~/cm3leon_jax, with a log per worker. See --help.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat << EOF
Usage: tpu/launch.sh --name NAME --zone ZONE [options] -- COMMAND [ARG...]

Runs COMMAND at once on every worker (\`gcloud compute tpus tpu-vm ssh --worker=all\`), in the
checkout that tpu/setup.sh made (~/$REMOTE_REPO) with its venv active. Every worker runs the same
command; a multi-host JAX job forms by itself (entry points call
cm3leon_jax.parallel.distributed.initialize_if_needed(), which reads the slice's topology).
Each worker writes its output to ~/$REMOTE_REPO/logs/LABEL/worker-<hostname>.log as well as to this
terminal; --copy-logs-to also copies every worker's log to Cloud Storage when the command ends.
The exit status is the command's (with several workers, gcloud's: non-zero if any worker failed).

$TPU_FLAGS_HELP
  --run-label LABEL     names the log folder (default: run-<UTC date-time>)
  --worker W            all (default), one worker index (0: try something on one host), or a
                        list such as 1,3 or 0-3
  --env KEY=VALUE       export KEY on the workers before COMMAND (repeatable)
  --copy-logs-to GCS    e.g. gs://my-bucket/logs: logs end up in GCS/LABEL/worker-<hostname>.log
  --detach              start COMMAND in the background (nohup) and return at once; it survives a
                        dropped connection. Follow it with
                        tpu/launch.sh ... -- bash -c 'tail -n 20 logs/LABEL/worker-*.log'

COMMAND's words reach the workers exactly as given (each one quoted): no globbing, pipes or
variables there unless you ask for a shell, as in -- bash -c 'nproc; ls logs/*'.

Examples:
  tpu/launch.sh --name cm3-v5e --zone us-west4-a -- python -c 'import jax; print(jax.device_count())'
  tpu/launch.sh --name cm3-v5e --zone us-west4-a --detach --run-label pretrain-350m \\
      --copy-logs-to gs://my-bucket/logs -- python -m cm3leon_jax.pretrain \\
      --config experiments/cm3leon_350m.py --workdir gs://my-bucket/runs/cm3leon_350m
EOF
}

RUN_LABEL=""
WORKER="all"
ENV_ASSIGNMENTS=()
COPY_LOGS_TO=""
DETACH=0
COMMAND_WORDS=()

parse_script_flag() {
  SHIFT_BY=0
  case "$1" in
    --run-label) need_value "$1" $#; RUN_LABEL="$2"; SHIFT_BY=2 ;;
    --worker) need_value "$1" $#; WORKER="$2"; SHIFT_BY=2 ;;
    --env) need_value "$1" $#; ENV_ASSIGNMENTS+=("$2"); SHIFT_BY=2 ;;
    --copy-logs-to) need_value "$1" $#; COPY_LOGS_TO="${2%/}"; SHIFT_BY=2 ;;
    --detach) DETACH=1; SHIFT_BY=1 ;;
    --) SHIFT_BY=$#; shift; COMMAND_WORDS=("$@") ;;
  esac
}
UNKNOWN_HINT=" (the command to run goes after --)"
parse_flags "$@"

require_tpu
((${#COMMAND_WORDS[@]})) || die "no command: put it after --, e.g. -- python -m cm3leon_jax.demo --workdir /tmp/demo"
[[ "$WORKER" =~ ^(all|[0-9]+([-,][0-9]+)*)$ ]] ||
  die "--worker must be all, an index, or a list such as 0,2 or 1-3"
if [[ -z "$RUN_LABEL" ]]; then
  RUN_LABEL="run-$(date -u +%Y%m%d-%H%M%S)"
fi
[[ "$RUN_LABEL" =~ ^[A-Za-z0-9][A-Za-z0-9._=,+-]*$ ]] ||
  die "--run-label $RUN_LABEL: use letters, digits and . _ = , + - only"
[[ -z "$COPY_LOGS_TO" || "$COPY_LOGS_TO" == gs://* ]] || die "--copy-logs-to must be a gs:// path"
exports=""
for assignment in ${ENV_ASSIGNMENTS[@]+"${ENV_ASSIGNMENTS[@]}"}; do
  [[ "$assignment" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env $assignment: expected KEY=VALUE"
  exports+="export ${assignment%%=*}=$(quote "${assignment#*=}"); "
done

log_dir="logs/$RUN_LABEL"
log_file="$log_dir/worker-\$(hostname).log"
job="cd ~/$REMOTE_REPO || exit 1; source ~/$REMOTE_VENV/bin/activate || exit 1; set -o pipefail"
job+="; ${exports}mkdir -p $log_dir || exit 1"
job+="; $(quote_words "${COMMAND_WORDS[@]}") 2>&1 | tee $log_file; status=\$?"
if [[ -n "$COPY_LOGS_TO" ]]; then
  job+="; gcloud storage cp $log_file $(quote "$COPY_LOGS_TO/$RUN_LABEL/")"
  job+=" || echo \"warning: could not copy the log to $COPY_LOGS_TO\" >&2"
fi
job+="; exit \$status"
if ((DETACH)); then
  remote_command="nohup bash -c $(quote "$job") > /dev/null 2>&1 < /dev/null & echo \"\$(hostname): started, log ~/$REMOTE_REPO/$log_dir/worker-\$(hostname).log\""
else
  remote_command="bash -c $(quote "$job")"
fi

location_flags
note "run $RUN_LABEL on worker(s) $WORKER of $TPU_NAME; logs in ~/$REMOTE_REPO/$log_dir/"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION_FLAGS[@]}" "--worker=$WORKER" \
  "--command=$remote_command"
