#!/usr/bin/env bash
# Runs every missing entry of a sweep on one TPU VM, one after another. See --help.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat << EOF2
Usage: tpu/sweep.sh --name NAME --zone ZONE [--dry-run] -- SWEEP_FLAGS...

Asks \`python -m cm3leon_jax.sweep SWEEP_FLAGS --print_commands\` (here, on this machine) for the
tpu/launch.sh command of every run whose workdir has no metrics.json yet, then runs those commands
one after another: each run gets all workers of the slice, its logs go to
~/$REMOTE_REPO/logs/<run name>/ on the workers. A failed run does not stop the others; the exit
status is 1 if any failed. Run it again to retry what failed (finished runs are skipped), and run
\`python -m cm3leon_jax.sweep SWEEP_FLAGS\` here afterwards for the table of results (it reads the
workdirs, skips every finished run, and writes sweep_summary.csv).

SWEEP_FLAGS are those of cm3leon_jax.sweep: --config, --sweep, --entry, --workdir (gs://... so that
the workers and this machine see the same files), --finished_stage, --config.a.b=v.
Python here: \$PYTHON (default python3) with this repository's requirements installed.

$TPU_FLAGS_HELP
  --copy-logs-to GCS    passed to tpu/launch.sh for every run

Example:
  tpu/sweep.sh --name cm3-v5e --zone us-west4-a -- --config experiments/demo.py \\
      --sweep experiments/sweeps/demo_image_size.py --entry cm3leon_jax.demo \\
      --finished_stage demo --workdir gs://my-bucket/sweeps/demo_image_size
EOF2
}

COPY_LOGS_TO=""
SWEEP_FLAGS=()

parse_script_flag() {
  SHIFT_BY=0
  case "$1" in
    --copy-logs-to) need_value "$1" $#; COPY_LOGS_TO="$2"; SHIFT_BY=2 ;;
    --) SHIFT_BY=$#; shift; SWEEP_FLAGS=("$@") ;;
  esac
}
UNKNOWN_HINT=" (the sweep's own flags go after --)"
parse_flags "$@"

require_tpu
((${#SWEEP_FLAGS[@]})) || die "no sweep flags: put --config/--sweep/--entry/--workdir after --"
launch_flags=()
if ((DRY_RUN)); then launch_flags+=(--dry-run); fi
if [[ -n "$COPY_LOGS_TO" ]]; then launch_flags+=(--copy-logs-to "$COPY_LOGS_TO"); fi
print_flags=(--print_commands "--tpu_name=$TPU_NAME" "--tpu_zone=$TPU_ZONE")
if [[ -n "$TPU_PROJECT" ]]; then print_flags+=("--tpu_project=$TPU_PROJECT"); fi
if ((${#launch_flags[@]})); then
  print_flags+=("--launch_flags=$(quote_words "${launch_flags[@]}")")
fi

commands_file="$(mktemp)"
trap 'rm -f "$commands_file"' EXIT
PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m cm3leon_jax.sweep \
  "${SWEEP_FLAGS[@]}" "${print_flags[@]}" > "$commands_file" ||
  { echo "error: cm3leon_jax.sweep could not list the runs (see above)" >&2; exit 2; }

total="$(grep -c . "$commands_file" || true)"
if ((total == 0)); then
  note "every run of the sweep is finished; nothing to launch"
  exit 0
fi
index=0
failed=()
while IFS= read -r line <&3; do
  [[ -n "$line" ]] || continue
  index=$((index + 1))
  note "[$index/$total] $line"
  if ! (cd "$REPO_ROOT" && bash -c "$line") 3<&-; then  # launch lines start with tpu/launch.sh
    failed+=("$line")
    echo "error: run $index/$total failed; going on with the next" >&2
  fi
done 3< "$commands_file"

if ((${#failed[@]})); then
  echo "error: ${#failed[@]} of $total run(s) failed:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
note "all $total run(s) launched and finished"
