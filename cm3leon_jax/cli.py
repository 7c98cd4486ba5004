"""The command line every entry point shares: `--config path.py[:arg]`, `--config.a.b=v`, `--workdir`.

Usage in an entry point module:

    from cm3leon_jax import cli

    def main(cfg: ml_collections.ConfigDict, workdir: str) -> None: ...

    if __name__ == "__main__":
        cli.run(main, default_config="demo.py")

`default_config` names a file in `experiments/`, used when `--config` is not given (overrides still
work: the default is inserted into argv before absl parses it). Config errors are reported as one
clear line (`ConfigError`), not a traceback.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Optional, Sequence

from absl import app, flags, logging
import ml_collections
from ml_collections.config_flags import config_flags as config_flags_lib

from cm3leon_jax import compilation_cache
from cm3leon_jax import config as config_lib, experiment_files
from cm3leon_jax.config import ConfigError, InputError
from cm3leon_jax.parallel import distributed

EXPERIMENTS = experiment_files.EXPERIMENTS


def unknown_overrides(cfg: ml_collections.ConfigDict, argv: Sequence[str]) -> list[str]:
    """`--config.a.b=v` overrides of `argv` whose field `cfg` lacks, each with what it has."""
    problems = []
    for arg in argv:
        match = re.match(r"--config\.([A-Za-z0-9_.]+)(=|$)", arg)
        if not match:
            continue
        node, walked = cfg, []
        for part in match.group(1).split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = ", ".join(sorted(node.keys())) if isinstance(
                    node, ml_collections.ConfigDict) else "(not a section)"
                where = "config" + "".join(f".{w}" for w in walked)
                problems.append(f"--config.{match.group(1)}: {where} has no field {part!r} "
                                f"(it has: {known})")
                break
            node, walked = node[part], walked + [part]
    return problems


def sections_set_on(argv: Sequence[str]) -> list[str]:
    """The config sections a command line sets a field of (`--config.<section>.<field>=v`)."""
    found = []
    for arg in argv:
        match = re.match(r"--config\.([A-Za-z_][A-Za-z0-9_]*)\.", arg)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found


class _CompletingParser(config_flags_lib.ConfigFileFlagParser):
    """Loads the config file, adds every typed section's missing fields with their defaults
    (`config.complete`), and the typed sections the command line sets a field of when the file
    has none, then locks it: so `--config.<section>.<field>=v` works for every field of every
    typed section on every config file, whatever the file itself spells out."""

    def __init__(self, name: str, sys_argv: Optional[list[str]] = None):
        super().__init__(name=name, lock_config=False)
        self._argv = sys_argv

    def parse(self, path):
        loaded = super().parse(path)
        if isinstance(loaded, ml_collections.ConfigDict):
            argv = self._argv if self._argv is not None else sys.argv
            config_lib.complete(loaded, add_sections=sections_set_on(argv))
            problems = unknown_overrides(loaded, argv)
            if problems:
                raise ValueError("; ".join(problems))
            loaded.lock()
        return loaded


def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS,
                       sys_argv: Optional[list[str]] = None) -> flags.FlagHolder:
    """`--config` (`config_flags.DEFINE_config_file`'s flag, with `_CompletingParser`);
    `sys_argv`: the command line whose `--config.x=v` overrides to accept (default sys.argv)."""
    return flags.DEFINE_flag(config_flags_lib._ConfigFlag(  # noqa: SLF001 - as DEFINE_config_file
        parser=_CompletingParser("config", sys_argv), serializer=flags.ArgumentSerializer(), name="config",
        default=None, accept_new_attributes=False, flag_values=flag_values, sys_argv=sys_argv,
        help_string="Config file: experiments/<name>.py[:arg]. Override fields with --config.a.b=v."),
        flag_values)


_CONFIG = define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything this run writes.")

Main = Callable[[ml_collections.ConfigDict, str], None]


def _with_default_config(argv: list[str], default_config: Optional[str]) -> list[str]:
    has_config = any(a == "--config" or a.startswith("--config=") for a in argv)
    if has_config or default_config is None:
        return argv
    return [argv[0], f"--config={EXPERIMENTS / default_config}", *argv[1:]]


def start_app_main(argv: list[str], workdir: Optional[str]) -> None:
    """The start of an `app.run` entry point's own main (`generate`, `evaluate`): no stray
    arguments, a workdir, the compilation cache on before the first compile, and Orbax's
    per-file INFO logs off unless --verbosity was given."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not workdir:
        raise app.UsageError("--workdir is required")
    compilation_cache.enable()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it touches at INFO.


def run(main: Main, default_config: Optional[str] = None, require_workdir: bool = True) -> None:
    """Parses flags and calls `main(config, workdir)`; a ConfigError, InputError or missing /
    existing file exits with status 2 and its message (no traceback)."""

    def _main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if _CONFIG.value is None:
            raise app.UsageError("--config is required, e.g. --config experiments/demo.py")
        if require_workdir and not _WORKDIR.value:
            raise app.UsageError("--workdir is required")
        # Multi-host (TPU pod, or CPU processes with --coordinator_address): before any device use.
        distributed.initialize_if_needed()
        compilation_cache.enable()
        try:
            main(_CONFIG.value, _WORKDIR.value)
        except ConfigError as error:
            logging.error("%s", error)
            print(f"config error: {error}", file=sys.stderr)
            sys.exit(2)
        except (InputError, FileNotFoundError, FileExistsError) as error:
            logging.error("%s", error)
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(_main, argv=_with_default_config(sys.argv, default_config))
