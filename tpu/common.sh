# shellcheck shell=bash disable=SC2034  # variables here are read by the scripts that source it
# Shared by tpu/*.sh (sourced, never run): flag parsing, the TPU identity flags, quoting, and the
# dry-run switch through which every gcloud command goes.
#
# Conventions of every script here:
#   --name / --zone / --project      the TPU VM; default from CM3LEON_TPU_NAME / CM3LEON_TPU_ZONE /
#                                    CM3LEON_TPU_PROJECT (project: else gcloud's configured one)
#   --dry-run                        print the exact commands, one per line, run none of them
#   -h, --help                       usage, exit 0; a usage error exits 2 with one line saying why
# Written for bash 3.2 too (macOS's /bin/bash): no mapfile, no associative arrays.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where setup.sh puts the code and the virtual environment on every worker (relative to $HOME).
REMOTE_REPO="cm3leon_jax"
REMOTE_VENV="cm3leon_venv"

DRY_RUN=0
TPU_NAME="${CM3LEON_TPU_NAME:-}"
TPU_ZONE="${CM3LEON_TPU_ZONE:-}"
TPU_PROJECT="${CM3LEON_TPU_PROJECT:-}"

die() {
  echo "error: $*" >&2
  echo "run $(basename "$0") --help for usage" >&2
  exit 2
}

# quote WORD: WORD as one shell word, single-quoted only when it needs quoting.
quote() {
  local word="$1"
  if [[ -n "$word" && "$word" =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
    printf '%s' "$word"
  else
    local escaped=${word//\'/\'\\\'\'}
    printf "'%s'" "$escaped"
  fi
}

# quote_words WORD...: the words as one shell command line.
quote_words() {
  local line="" word
  for word in "$@"; do
    line+="${line:+ }$(quote "$word")"
  done
  printf '%s\n' "$line"
}

# run COMMAND...: prints it (dry run) or runs it.
run() {
  if ((DRY_RUN)); then
    quote_words "$@"
  else
    "$@"
  fi
}

# note TEXT: a comment line (on stderr, so stdout of a dry run holds commands only).
note() {
  echo "# $*" >&2
}

# split_flag_values ARG...: sets SPLIT_ARGS to the arguments with every --flag=value before a lone
# `--` split into `--flag value`, so the scripts parse a single form.
split_flag_values() {
  SPLIT_ARGS=()
  while (($#)); do
    if [[ "$1" == "--" ]]; then
      SPLIT_ARGS+=("$@")
      return
    fi
    if [[ "$1" == --*=* ]]; then
      SPLIT_ARGS+=("${1%%=*}" "${1#*=}")
    else
      SPLIT_ARGS+=("$1")
    fi
    shift
  done
}

# need_value FLAG ARGC [NEXT]: fails unless FLAG is followed by a value.
need_value() {
  if (($2 < 2)); then
    die "$1 needs a value"
  fi
}

# parse_tpu_flag ARG...: handles --name/--zone/--project/--dry-run; sets SHIFT_BY (0: not ours).
parse_tpu_flag() {
  SHIFT_BY=0
  case "$1" in
    --name) need_value "$1" $#; TPU_NAME="$2"; SHIFT_BY=2 ;;
    --zone) need_value "$1" $#; TPU_ZONE="$2"; SHIFT_BY=2 ;;
    --project) need_value "$1" $#; TPU_PROJECT="$2"; SHIFT_BY=2 ;;
    --dry-run) DRY_RUN=1; SHIFT_BY=1 ;;
  esac
}

# parse_flags ARG...: the argument loop of every script: --flag=value is split, then each argument
# is one of the TPU identity flags (parse_tpu_flag), -h/--help, or the script's own: the script
# defines parse_script_flag, which sets SHIFT_BY to the words it took (0: not its flag). A flag
# nobody takes is a usage error, with the script's UNKNOWN_HINT appended.
parse_flags() {
  split_flag_values "$@"
  set -- ${SPLIT_ARGS[@]+"${SPLIT_ARGS[@]}"}
  while (($#)); do
    parse_tpu_flag "$@"
    if ((!SHIFT_BY)); then
      case "$1" in
        -h | --help) usage; exit 0 ;;
      esac
      parse_script_flag "$@"
    fi
    ((SHIFT_BY)) || die "unknown argument $1${UNKNOWN_HINT:-}"
    shift "$SHIFT_BY"
  done
}

# require_tpu: checks name and zone are known and gcloud is there (unless dry run).
require_tpu() {
  [[ -n "$TPU_NAME" ]] || die "--name is required (or set CM3LEON_TPU_NAME)"
  [[ -n "$TPU_ZONE" ]] || die "--zone is required (or set CM3LEON_TPU_ZONE)"
  [[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name $TPU_NAME: TPU names are lower-case letters, digits and '-', starting with a letter"
  if ((!DRY_RUN)) && ! command -v gcloud > /dev/null 2>&1; then
    echo "error: gcloud is not on PATH: install the Google Cloud CLI" \
      "(https://cloud.google.com/sdk/docs/install) or use --dry-run" >&2
    exit 2
  fi
}

# location_flags: --zone=... and, when given, --project=... for gcloud.
location_flags() {
  LOCATION_FLAGS=("--zone=$TPU_ZONE")
  if [[ -n "$TPU_PROJECT" ]]; then
    LOCATION_FLAGS+=("--project=$TPU_PROJECT")
  fi
}

TPU_FLAGS_HELP="  --name NAME       the TPU VM (default: \$CM3LEON_TPU_NAME)
  --zone ZONE       its zone, e.g. us-west4-a for v5e, us-east5-a for v5p (default: \$CM3LEON_TPU_ZONE)
  --project ID      its project (default: \$CM3LEON_TPU_PROJECT, else gcloud's configured project)
  --dry-run         print the exact commands instead of running them
  -h, --help        this help"
