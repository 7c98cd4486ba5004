"""Runs a sweep: one entry point, one base config, one run per entry of a sweep file.

    python -m cm3leon_jax.sweep --config experiments/demo.py \\
        --sweep experiments/sweeps/demo_image_size.py --entry cm3leon_jax.demo --workdir /tmp/sweep

runs, one after another, `python -m <entry> --config <config> [--config.a=b from this command line]
--config.<field>=<value>... --workdir <workdir>/<run name>` for every entry of the sweep, where the
run name is built from the entry's overrides (`spec.run_name`, e.g. `data.image_size=32`). Runs
whose directory already holds a metrics.json (with `--finished_stage`, one that holds that stage)
are skipped, so re-running a sweep after an interruption or a failure only runs what is missing. At
the end it prints a table of every run's final metrics and writes `<workdir>/sweep_summary.csv`; it
exits with status 1 when a run failed.

With `--print_commands` nothing runs: it prints, one per line, the `tpu/launch.sh` command that runs
each missing entry on all workers of a Cloud TPU VM (`tpu/sweep.sh` executes them), with the config
path made relative to the repository root, where `tpu/launch.sh` runs commands.

Every entry is checked against the config before anything runs: an unknown field or a value of the
wrong type is a one-line error, not a failure an hour into the sweep. The workdir may be `gs://...`.
"""

from __future__ import annotations

import importlib.util
import sys

from absl import flags
import ml_collections
from ml_collections import config_flags

from cm3leon_jax import cli
from cm3leon_jax.sweep import spec as sweeps
from cm3leon_jax.sweep.runner import (MODULE_NAME, config_arg_in_repo, entry_command,
                                      execute_locally, launch_command, plan_runs, run_all,
                                      summarize)

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file: experiments/sweeps/<name>.py with get_sweep().")
_ENTRY = flags.DEFINE_string("entry", None, "Module every run executes, e.g. cm3leon_jax.pretrain.")
_FINISHED_STAGE = flags.DEFINE_string(
    "finished_stage", "", "Count a run as finished only when its metrics.json holds this stage "
    "(useful for multi-stage entry points such as cm3leon_jax.demo); empty: any metrics.json.")
_PRINT_COMMANDS = flags.DEFINE_bool(
    "print_commands", False, "Print the tpu/launch.sh command of every missing run instead of "
    "running it here.")
_TPU_NAME = flags.DEFINE_string("tpu_name", None, "--print_commands: the TPU VM (launch.sh --name).")
_TPU_ZONE = flags.DEFINE_string("tpu_zone", None, "--print_commands: its zone (launch.sh --zone).")
_TPU_PROJECT = flags.DEFINE_string("tpu_project", None, "--print_commands: its project.")
_LAUNCH_FLAGS = flags.DEFINE_string(
    "launch_flags", "", "--print_commands: further tpu/launch.sh flags, e.g. '--dry-run'.")


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    if not _SWEEP.value:
        raise sweeps.SweepError("--sweep is required, e.g. --sweep experiments/sweeps/demo_image_size.py")
    if not _ENTRY.value or not MODULE_NAME.match(_ENTRY.value):
        raise sweeps.SweepError(f"--entry must name a module such as cm3leon_jax.pretrain, got "
                                f"{_ENTRY.value!r}")
    try:
        entry_found = importlib.util.find_spec(_ENTRY.value) is not None
    except ImportError:  # a parent package of the entry does not exist
        entry_found = False
    if not entry_found:
        raise sweeps.SweepError(f"--entry {_ENTRY.value}: no such module here (is it on PYTHONPATH?)")
    config_flag = flags.FLAGS["config"]
    config_arg = config_flags.get_config_filename(config_flag)
    base_overrides = dict(config_flags.get_override_values(config_flag))
    entries = sweeps.load_sweep(_SWEEP.value)
    sweeps.check_against_config(cfg, entries, _SWEEP.value)
    both = sorted({field for entry in entries for field in entry} & set(base_overrides))
    if both:
        raise sweeps.SweepError(f"config.{both[0]} is set both on the command line and by the sweep "
                                f"{_SWEEP.value}; drop one of them")
    runs = plan_runs(entries, workdir, _SWEEP.value)

    if _PRINT_COMMANDS.value:
        remote_config = config_arg_in_repo(config_arg)
        for run in runs:
            if sweeps.is_finished(run.workdir, _FINISHED_STAGE.value):
                print(f"skipping {run.name}: {run.workdir} holds metrics.json", file=sys.stderr)
                continue
            argv = entry_command("python", _ENTRY.value, remote_config, base_overrides, run)
            print(launch_command(run, argv, _TPU_NAME.value or "", _TPU_ZONE.value or "",
                                 _TPU_PROJECT.value or "", _LAUNCH_FLAGS.value), flush=True)
        return

    print(f"sweep {_SWEEP.value}: {len(runs)} runs of {_ENTRY.value} under {workdir}", flush=True)
    run_all(runs, lambda run: entry_command(sys.executable, _ENTRY.value, config_arg,
                                            base_overrides, run),
            execute_locally, _FINISHED_STAGE.value)
    table, csv_path = summarize(runs, workdir)
    print(f"\n{table}\n\nsummary written to {csv_path}", flush=True)
    failed = [run.name for run in runs if run.status.startswith("failed")]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
