"""tpu/*.sh against a fake `gcloud` (first on PATH) that records its arguments: the recorded argv,
`--dry-run` printing exactly those commands, `--help`, clear usage errors, and the remote commands
of launch.sh run for real in a sandbox home standing in for a TPU worker."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest
import locations

REPO = locations.ROOT
TPU = REPO / "tpu"
SCRIPTS = ["create.sh", "setup.sh", "launch.sh", "sweep.sh", "delete.sh"]
BASH = shutil.which("bash")

FAKE_GCLOUD = f"""#!{sys.executable}
# Records argv as one JSON line; `describe` answers the next line of $FAKE_GCLOUD_STATES; `scp` keeps
# a copy of the file it was asked to send; exits with $FAKE_GCLOUD_EXIT (default 0).
import json, os, shutil, sys

args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if "describe" in args:
    with open(os.environ["FAKE_GCLOUD_STATES"]) as f:
        states = f.read().splitlines()
    print(states[0])
    with open(os.environ["FAKE_GCLOUD_STATES"], "w") as f:
        f.write("\\n".join(states[1:]) + "\\n")
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    shutil.copy(args[4], os.path.join(os.path.dirname(os.environ["FAKE_GCLOUD_LOG"]), "shipped"))
sys.exit(int(os.environ.get("FAKE_GCLOUD_EXIT", "0")))
"""


class Gcloud:
    """Runs tpu scripts with the fake gcloud on PATH; `calls` are the recorded argv lists."""

    def __init__(self, tmp_path: pathlib.Path):
        self.dir = tmp_path / "gcloud"
        (self.dir / "bin").mkdir(parents=True)
        fake = self.dir / "bin" / "gcloud"
        fake.write_text(FAKE_GCLOUD)
        fake.chmod(0o755)
        self.log = self.dir / "calls.jsonl"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CM3LEON_TPU_")}
        self.env.update(PATH=f"{self.dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
                        FAKE_GCLOUD_LOG=str(self.log), TMPDIR=str(tmp_path),
                        FAKE_GCLOUD_STATES=str(self.dir / "states"))

    @property
    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def reset(self):
        self.log.unlink(missing_ok=True)

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([BASH, str(TPU / script), *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=120, cwd=self.dir)


@pytest.fixture
def gcloud(tmp_path):
    return Gcloud(tmp_path)


def _gcloud_lines(stdout: str) -> list[list[str]]:
    return [shlex.split(line)[1:] for line in stdout.splitlines() if line.startswith("gcloud ")]


def _same_with_dry_run(gcloud: Gcloud, script: str, *args: str, **env: str) -> list[list[str]]:
    """Runs the script for real and with --dry-run; both must mean the same gcloud commands."""
    gcloud.reset()
    real = gcloud.run(script, *args, **env)
    assert real.returncode == 0, real.stderr
    calls = gcloud.calls
    gcloud.reset()
    dry = gcloud.run(script, "--dry-run", *args, **env)
    assert dry.returncode == 0, dry.stderr
    assert gcloud.calls == [], "a dry run must not call gcloud"
    assert _gcloud_lines(dry.stdout) == calls
    return calls


# --------------------------------------------------------------------------------------------------
# Every script
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_zero(gcloud, script):
    done = gcloud.run(script, "--help")
    assert done.returncode == 0 and done.stdout.startswith(f"Usage: tpu/{script}"), done.stderr
    assert "--dry-run" in done.stdout and gcloud.calls == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_name_and_unknown_flags_are_clear_errors(gcloud, script):
    command = ["--", "true"] if script in ("launch.sh", "sweep.sh") else []
    accelerator = ["--accelerator-type=v5p-32"] if script == "create.sh" else []
    done = gcloud.run(script, "--zone", "us-west4-a", *accelerator, *command)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --name is required (or set CM3LEON_TPU_NAME)\n")
    done = gcloud.run(script, "--name", "t", "--zone", "z", "--frobnicate")
    assert done.returncode == 2 and "error: unknown argument --frobnicate" in done.stderr
    done = gcloud.run(script, "--zone")
    assert done.returncode == 2 and "error: --zone needs a value" in done.stderr
    assert gcloud.calls == []


@pytest.mark.parametrize("script", SCRIPTS + ["common.sh"])
def test_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(TPU / script)]).returncode == 0
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-x", str(TPU / script)], cwd=REPO,
                              capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_environment_supplies_name_and_zone(gcloud):
    done = gcloud.run("delete.sh", "--dry-run", CM3LEON_TPU_NAME="env-tpu",
                      CM3LEON_TPU_ZONE="us-east5-a", CM3LEON_TPU_PROJECT="proj")
    assert done.stdout == \
        "gcloud compute tpus tpu-vm delete env-tpu --zone=us-east5-a --project=proj\n"


def test_missing_gcloud_is_explained(gcloud, tmp_path):
    tools = tmp_path / "tools_without_gcloud"  # this machine may have a real gcloud: never reach it
    tools.mkdir()
    for tool in ("dirname", "basename"):
        (tools / tool).symlink_to(shutil.which(tool))
    done = gcloud.run("delete.sh", "--name", "t", "--zone", "z", PATH=str(tools))
    assert done.returncode == 2 and "gcloud is not on PATH" in done.stderr
    assert gcloud.run("delete.sh", "--name", "t", "--zone", "z", "--dry-run",
                      PATH=str(tools)).returncode == 0  # a dry run needs no gcloud


# --------------------------------------------------------------------------------------------------
# create.sh / delete.sh
# --------------------------------------------------------------------------------------------------


def test_create_direct(gcloud):
    calls = _same_with_dry_run(gcloud, "create.sh", "--name", "cm3-v5e", "--zone", "us-west4-a",
                               "--project=my-proj", "--accelerator-type", "v5litepod-8", "--spot")
    assert calls == [["compute", "tpus", "tpu-vm", "create", "cm3-v5e", "--zone=us-west4-a",
                      "--project=my-proj", "--accelerator-type=v5litepod-8",
                      "--version=v2-alpha-tpuv5-lite", "--spot"]]


def test_create_queued(gcloud):
    calls = _same_with_dry_run(gcloud, "create.sh", "--name=cm3-v5p", "--zone=us-east5-a",
                               "--accelerator-type=v5p-128", "--queued", "--reserved",
                               "--valid-until-duration=6h", "--runtime-version=v2-alpha-tpuv5-x")
    assert calls == [["compute", "tpus", "queued-resources", "create", "cm3-v5p",
                      "--node-id=cm3-v5p", "--zone=us-east5-a", "--accelerator-type=v5p-128",
                      "--runtime-version=v2-alpha-tpuv5-x", "--reserved",
                      "--valid-until-duration=6h"]]


def test_create_wait_polls_until_active(gcloud):
    args = ["--name", "q", "--zone", "z", "--accelerator-type", "v5p-32", "--queued", "--spot",
            "--wait", "--poll-seconds", "1"]
    (gcloud.dir / "states").write_text("WAITING_FOR_RESOURCES\nPROVISIONING\nACTIVE\n")
    done = gcloud.run("create.sh", *args)
    assert done.returncode == 0, done.stderr
    describe = ["compute", "tpus", "queued-resources", "describe", "q", "--zone=z",
                "--format=value(state.state)"]
    assert gcloud.calls[1:] == [describe] * 3
    assert gcloud.calls[0][:4] == ["compute", "tpus", "queued-resources", "create"]
    assert "--spot" in gcloud.calls[0] and "is ACTIVE" in done.stdout

    gcloud.reset()
    (gcloud.dir / "states").write_text("FAILED\n")
    failed = gcloud.run("create.sh", *args)
    assert failed.returncode == 1 and "queued resource q is FAILED" in failed.stderr


@pytest.mark.parametrize("args, message", [
    (["--accelerator-type", "v5p-32", "--spot", "--preemptible"], "exclude each other"),
    (["--accelerator-type", "v5p-32", "--queued", "--preemptible"], "queued resources take --spot"),
    (["--accelerator-type", "v5p-32", "--wait"], "--wait needs --queued"),
    (["--accelerator-type", "v5p-32", "--reserved"], "--reserved needs --queued"),
    (["--accelerator-type", "tpu-large"], "is not of the form"),
    (["--accelerator-type", "v9x-8"], "no default runtime version for v9x-8"),
    ([], "--accelerator-type is required"),
])
def test_create_rejects_inconsistent_flags(gcloud, args, message):
    done = gcloud.run("create.sh", "--name", "t", "--zone", "z", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert gcloud.calls == []


def test_delete(gcloud):
    assert _same_with_dry_run(gcloud, "delete.sh", "--name", "t", "--zone", "z") == [
        ["compute", "tpus", "tpu-vm", "delete", "t", "--zone=z"]]
    assert _same_with_dry_run(gcloud, "delete.sh", "--name", "t", "--zone", "z", "--queued",
                              "--yes") == [
        ["compute", "tpus", "queued-resources", "delete", "t", "--zone=z", "--force", "--quiet"]]


# --------------------------------------------------------------------------------------------------
# setup.sh
# --------------------------------------------------------------------------------------------------


def test_setup_ships_the_commit_and_installs_on_all_workers(gcloud, tmp_path):
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    calls = _same_with_dry_run(gcloud, "setup.sh", "--name", "cm3", "--zone", "z",
                               "--jax-spec", "jax[tpu]==0.10.2")
    tarball = str(tmp_path / f"cm3leon_jax-{commit[:12]}.tar.gz")
    assert calls[0] == ["compute", "tpus", "tpu-vm", "scp", tarball, "cm3:cm3leon_jax.tar.gz",
                        "--zone=z", "--worker=all"]
    assert not pathlib.Path(tarball).exists(), "the local tarball is removed afterwards"
    with tarfile.open(gcloud.dir / "shipped") as shipped:
        names = shipped.getnames()
    assert "cm3leon_jax/setup.py" in names and "cm3leon_jax/cm3leon_jax/cli.py" in names

    ssh = calls[1]
    assert ssh[:8] == ["compute", "tpus", "tpu-vm", "ssh", "cm3", "--zone=z", "--worker=all",
                       ssh[7]] and len(ssh) == 8
    remote = ssh[7].removeprefix("--command=")
    assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0
    assert "python3.11 -m venv cm3leon_venv" in remote
    assert "cm3leon_venv/bin/pip install -q -e ./cm3leon_jax 'jax[tpu]==0.10.2'" in remote
    assert f"echo {commit[:12]} > cm3leon_jax/REVISION" in remote


def test_setup_rejects_an_unknown_revision(gcloud):
    done = gcloud.run("setup.sh", "--name", "cm3", "--zone", "z", "--ref", "no-such-branch")
    assert done.returncode == 2 and "--ref no-such-branch is not a commit" in done.stderr


# --------------------------------------------------------------------------------------------------
# launch.sh, with its remote command executed in a sandbox worker home
# --------------------------------------------------------------------------------------------------


def _worker_home(tmp_path: pathlib.Path) -> pathlib.Path:
    """What setup.sh leaves on a worker: ~/cm3leon_jax and a venv whose activate marks itself."""
    home = tmp_path / "worker_home"
    (home / "cm3leon_jax").mkdir(parents=True)
    (home / "cm3leon_venv" / "bin").mkdir(parents=True)
    (home / "cm3leon_venv" / "bin" / "activate").write_text("export VENV_ACTIVE=yes\n")
    return home


def _remote_command(call: list[str]) -> str:
    assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "cm3"]
    return call[-1].removeprefix("--command=")


WORKER_PROGRAM = ("import os, sys; print('hello from', os.getcwd(), os.environ['VENV_ACTIVE'], "
                  "os.environ['XLA_FLAGS'], sys.argv[1]); sys.exit(3)")


def test_launch_runs_on_all_workers_and_keeps_logs(gcloud, tmp_path):
    args = ["--name", "cm3", "--zone", "z", "--run-label", "t1", "--env", "XLA_FLAGS=--a b",
            "--copy-logs-to", "gs://bucket/logs/", "--", sys.executable, "-c", WORKER_PROGRAM,
            "it's quoted"]
    calls = _same_with_dry_run(gcloud, "launch.sh", *args)
    assert len(calls) == 1 and calls[0][5:7] == ["--zone=z", "--worker=all"]

    home = _worker_home(tmp_path)
    gcloud.reset()
    worker = subprocess.run(["bash", "-c", _remote_command(calls[0])], capture_output=True,
                            text=True, timeout=60, env={**gcloud.env, "HOME": str(home)})
    assert worker.returncode == 3, worker.stderr  # the command's own exit status
    expected = f"hello from {home / 'cm3leon_jax'} yes --a b it's quoted"
    assert expected in worker.stdout
    (log,) = (home / "cm3leon_jax" / "logs" / "t1").glob("worker-*.log")
    assert log.read_text().strip() == expected
    assert gcloud.calls == [["storage", "cp", f"logs/t1/{log.name}", "gs://bucket/logs/t1/"]]


def test_launch_detached_returns_at_once_and_keeps_running(gcloud, tmp_path):
    calls = _same_with_dry_run(gcloud, "launch.sh", "--name", "cm3", "--zone", "z", "--worker", "0",
                               "--run-label", "bg", "--detach", "--", "bash", "-c",
                               "sleep 1; echo finished")
    assert calls[0][6] == "--worker=0"
    home = _worker_home(tmp_path)
    start = time.monotonic()
    worker = subprocess.run(["bash", "-c", _remote_command(calls[0])], capture_output=True,
                            text=True, timeout=60, env={**gcloud.env, "HOME": str(home)})
    assert worker.returncode == 0 and time.monotonic() - start < 1.0
    assert ": started, log ~/cm3leon_jax/logs/bg/worker-" in worker.stdout
    logs = home / "cm3leon_jax" / "logs" / "bg"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = list(logs.glob("worker-*.log"))
        if found and found[0].read_text().strip() == "finished":
            break
        time.sleep(0.2)
    else:
        pytest.fail("the detached command did not write its log")


@pytest.mark.parametrize("args, message", [
    ([], "no command: put it after --"),
    (["--worker", "first", "--", "true"], "--worker must be all, an index, or a list"),
    (["--env", "1X=2", "--", "true"], "--env 1X=2: expected KEY=VALUE"),
    (["--run-label", "a/b", "--", "true"], "--run-label a/b"),
    (["--copy-logs-to", "/tmp/logs", "--", "true"], "--copy-logs-to must be a gs:// path"),
])
def test_launch_usage_errors(gcloud, args, message):
    done = gcloud.run("launch.sh", "--name", "cm3", "--zone", "z", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_launch_default_label_is_a_utc_time(gcloud):
    done = gcloud.run("launch.sh", "--name", "cm3", "--zone", "z", "--dry-run", "--", "true")
    assert "tee logs/run-20" in done.stdout and "# run run-20" in done.stderr


# --------------------------------------------------------------------------------------------------
# sweep.sh: cm3leon_jax.sweep --print_commands, then launch.sh per missing run
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def sweep_files(tmp_path):
    (tmp_path / "tiny.py").write_text(textwrap.dedent("""
        import ml_collections
        def get_config(arg=None):
            return ml_collections.ConfigDict({"train": {"lr": 0.1}})
    """))
    (tmp_path / "lr.py").write_text(textwrap.dedent("""
        def get_sweep():
            return [{"train.lr": 0.1}, {"train.lr": 0.01}]
    """))
    workdir = tmp_path / "sweep"
    return ["--config", str(tmp_path / "tiny.py"), "--sweep", str(tmp_path / "lr.py"),
            "--entry", "cm3leon_jax.demo", "--workdir", str(workdir)], workdir


def test_sweep_launches_each_missing_run(gcloud, sweep_files):
    flags, workdir = sweep_files
    (workdir / "train.lr=0.1").mkdir(parents=True)
    (workdir / "train.lr=0.1" / "metrics.json").write_text('{"pretrain": {"loss": 2.0}}')
    (workdir / "train.lr=0.01").mkdir()
    calls = _same_with_dry_run(gcloud, "sweep.sh", "--name", "cm3", "--zone", "z",
                               "--copy-logs-to", "gs://b/logs", "--", *flags,
                               PYTHON=sys.executable)
    assert len(calls) == 1  # the finished run is skipped
    assert calls[0][:7] == ["compute", "tpus", "tpu-vm", "ssh", "cm3", "--zone=z", "--worker=all"]
    remote = _remote_command(calls[0])
    assert "mkdir -p logs/train.lr=0.01" in remote and "gs://b/logs/train.lr=0.01/" in remote
    inner = shlex.split(shlex.split(remote)[2])  # bash -c '<job>' -> the job's words
    start = inner.index("python")
    assert inner[start:start + 6] == [
        "python", "-m", "cm3leon_jax.demo", f"--config={flags[1]}", "--config.train.lr=0.01",
        f"--workdir={workdir / 'train.lr=0.01'}"]


def test_sweep_goes_on_after_a_failed_run(gcloud, sweep_files):
    flags, _ = sweep_files
    done = gcloud.run("sweep.sh", "--name", "cm3", "--zone", "z", "--", *flags,
                      PYTHON=sys.executable, FAKE_GCLOUD_EXIT="1")
    assert done.returncode == 1 and "2 of 2 run(s) failed" in done.stderr
    assert len(gcloud.calls) == 2


def test_sweep_reports_a_bad_sweep_before_launching(gcloud, sweep_files, tmp_path):
    flags, _ = sweep_files
    (tmp_path / "lr.py").write_text("def get_sweep():\n    return [{'train.rate': 1.0}]\n")
    done = gcloud.run("sweep.sh", "--name", "cm3", "--zone", "z", "--", *flags,
                      PYTHON=sys.executable)
    assert done.returncode == 2 and "no field config.train.rate" in done.stderr
    assert gcloud.calls == []
