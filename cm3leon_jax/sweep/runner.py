"""Running a sweep (`python -m cm3leon_jax.sweep`, whose docstring says how): one run per entry
of a sweep file, each `python -m <entry> --config <config> --config.<field>=<value>... --workdir
<workdir>/<run name>`, skipping runs that finished, then a table and `sweep_summary.csv` of every
run's final metrics; or the `tpu/launch.sh` line of each missing run.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Any, Callable, Sequence

from etils import epath

from cm3leon_jax import console, experiment_files, results
from cm3leon_jax.sweep import spec as sweeps

REPO_ROOT = experiment_files.EXPERIMENTS.parent
LAUNCH_SCRIPT = "tpu/launch.sh"
SUMMARY_FILE = "sweep_summary.csv"
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclasses.dataclass
class Run:
    """One entry of the sweep: its overrides, directory and (after running) its status."""

    name: str
    overrides: dict[str, Any]
    workdir: str
    status: str = "pending"


def plan_runs(entries: Sequence[dict[str, Any]], root: str, source: str) -> list[Run]:
    names = sweeps.run_names(entries, source)
    return [Run(name, dict(entry), str(epath.Path(root) / name)) for name, entry in zip(names, entries)]


def entry_command(python: str, entry: str, config_arg: str, base_overrides: dict[str, Any],
                  run: Run) -> list[str]:
    return [python, "-m", entry, f"--config={config_arg}", *sweeps.override_flags(base_overrides),
            *sweeps.override_flags(run.overrides), f"--workdir={run.workdir}"]


def config_arg_in_repo(config_arg: str) -> str:
    """`path[:arg]` with the path relative to the repository root when it lies inside it."""
    path, sep, arg = config_arg.partition(":")
    resolved = pathlib.Path(path).resolve()
    try:
        path = str(resolved.relative_to(REPO_ROOT))
    except ValueError:
        console.say(f"warning: config {path} is outside the repository; it must exist at that path on "
                    "the TPU VM", file=sys.stderr)
    return path + sep + arg


def launch_command(run: Run, entry_argv: Sequence[str], tpu_name: str = "", zone: str = "",
                   project: str = "", launch_flags: str = "") -> str:
    """The `tpu/launch.sh ... -- python -m ...` line for one run, quoted for a POSIX shell.

    TPU name, zone and project left empty are left out (launch.sh then takes them from the
    CM3LEON_TPU_* environment variables or reports them missing).
    """
    words = [LAUNCH_SCRIPT]
    for flag, value in (("--name", tpu_name), ("--zone", zone), ("--project", project)):
        if value:
            words += [flag, value]
    words += shlex.split(launch_flags)
    words += ["--run-label", run.name, "--", *entry_argv]
    return shlex.join(words)


def run_all(runs: Sequence[Run], command_for: Callable[[Run], list[str]],
            execute: Callable[[list[str]], int], finished_stage: str = "") -> None:
    """Runs every unfinished run in order, setting each run's status; never stops at a failure."""
    for index, run in enumerate(runs, 1):
        if sweeps.is_finished(run.workdir, finished_stage):
            run.status = "finished earlier"
            console.say(f"[{index}/{len(runs)}] {run.name}: metrics.json exists, skipped")
            continue
        command = command_for(run)
        console.say(f"[{index}/{len(runs)}] {run.name}: {shlex.join(command)}")
        returncode = execute(command)
        run.status = "ran" if returncode == 0 else f"failed (exit {returncode})"
        if returncode != 0:
            console.say(f"[{index}/{len(runs)}] {run.name}: {run.status}")


def execute_locally(command: list[str]) -> int:
    return subprocess.run(command, check=False).returncode


def summarize(runs: Sequence[Run], root: str) -> tuple[str, epath.Path]:
    """The text table of all runs' final metrics, and the CSV written to `<root>/sweep_summary.csv`."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "status": run.status}
        row.update(run.overrides)
        row.update(sweeps.flatten_metrics(results.read_metrics(run.workdir)))
        rows.append(row)
    columns, cells = sweeps.summary_table(rows)
    csv_path = sweeps.write_csv(epath.Path(root) / SUMMARY_FILE, columns, cells)
    return sweeps.format_text_table(columns, cells), csv_path
