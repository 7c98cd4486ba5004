#!/usr/bin/env bash
# Installs this repository (a committed revision) on every worker of a TPU VM. See --help.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat << EOF
Usage: tpu/setup.sh --name NAME --zone ZONE [options]

Installs the code on every worker of the TPU VM:
  1. here: \`git archive\` of REF (committed files only) into a tarball,
  2. \`gcloud compute tpus tpu-vm scp\` of the tarball to all workers,
  3. \`gcloud compute tpus tpu-vm ssh --worker=all\`: unpack into ~/$REMOTE_REPO (replacing an older
     copy), create the virtual environment ~/$REMOTE_VENV with Python PY (installed from the
     deadsnakes PPA when the image lacks it), \`pip install -e ~/$REMOTE_REPO 'JAX_SPEC'\`, and print each
     worker's view of the TPU (all workers at once, so a multi-host slice reports its global count).
Run it again after committing changes: it re-ships the code and re-installs into the same venv
(stop running jobs first: it replaces ~/$REMOTE_REPO under them).

$TPU_FLAGS_HELP
  --ref REF             revision to ship (default: HEAD; uncommitted changes are not shipped)
  --python-version PY   Python for the venv (default: 3.11)
  --jax-spec SPEC       pip requirement for JAX on TPU (default: 'jax[tpu]'; pin e.g. 'jax[tpu]==0.10.2')

Example:
  tpu/setup.sh --name cm3-v5e --zone us-west4-a
EOF
}

REF="HEAD"
PYTHON_VERSION="3.11"
JAX_SPEC="jax[tpu]"

parse_script_flag() {
  SHIFT_BY=0
  case "$1" in
    --ref) need_value "$1" $#; REF="$2"; SHIFT_BY=2 ;;
    --python-version) need_value "$1" $#; PYTHON_VERSION="$2"; SHIFT_BY=2 ;;
    --jax-spec) need_value "$1" $#; JAX_SPEC="$2"; SHIFT_BY=2 ;;
  esac
}
parse_flags "$@"

require_tpu
[[ "$PYTHON_VERSION" =~ ^3\.[0-9]+$ ]] || die "--python-version $PYTHON_VERSION: give it as 3.11, 3.12, ..."
COMMIT="$(git -C "$REPO_ROOT" rev-parse --verify --quiet "$REF^{commit}")" ||
  die "--ref $REF is not a commit of $REPO_ROOT"
if [[ "$REF" == "HEAD" ]] && ! git -C "$REPO_ROOT" diff-index --quiet HEAD --; then
  note "warning: the working tree has uncommitted changes; only commit ${COMMIT:0:12} is shipped"
fi

TARBALL="${TMPDIR:-/tmp}/cm3leon_jax-${COMMIT:0:12}.tar.gz"
python_bin="python$PYTHON_VERSION"
remote_steps=(
  "set -euo pipefail"
  "if ! command -v $python_bin > /dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq software-properties-common && sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $python_bin $python_bin-venv; fi"
  "rm -rf $REMOTE_REPO.new && mkdir $REMOTE_REPO.new && tar -xzf $REMOTE_REPO.tar.gz -C $REMOTE_REPO.new --strip-components=1"
  "rm -rf $REMOTE_REPO && mv $REMOTE_REPO.new $REMOTE_REPO && rm $REMOTE_REPO.tar.gz && echo ${COMMIT:0:12} > $REMOTE_REPO/REVISION"
  "if [ ! -x $REMOTE_VENV/bin/python ]; then $python_bin -m venv $REMOTE_VENV; fi"
  "$REMOTE_VENV/bin/pip install -q -U pip"
  "$REMOTE_VENV/bin/pip install -q -e ./$REMOTE_REPO $(quote "$JAX_SPEC")"
  "$REMOTE_VENV/bin/python -c 'import socket, jax; print(socket.gethostname(), \"process\", jax.process_index(), \"sees\", jax.device_count(), \"devices,\", jax.local_device_count(), \"local\")'"
)
remote_command="$(printf '%s; ' "${remote_steps[@]}")"
remote_command="${remote_command%; }"

location_flags
note "shipping $REF = commit ${COMMIT:0:12} to every worker of $TPU_NAME"
run git -C "$REPO_ROOT" archive --format=tar.gz "--prefix=$REMOTE_REPO/" -o "$TARBALL" "$COMMIT"
if ((!DRY_RUN)); then
  trap 'rm -f "$TARBALL"' EXIT
fi
run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:$REMOTE_REPO.tar.gz" "${LOCATION_FLAGS[@]}" \
  --worker=all
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION_FLAGS[@]}" --worker=all \
  "--command=$remote_command"
