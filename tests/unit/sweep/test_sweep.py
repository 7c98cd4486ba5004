"""Sweeps: the product/zip_ helpers, names, checks against the config, the runner end to end with a
throwaway entry module (skipping finished runs, failures, CSV), `--print_commands`, and the runner
plus `results` on a fake `gs://` file system (fsspec's in-memory one)."""

import csv
import importlib
import io
import os
import shlex
import subprocess
import sys
import textwrap

from etils import epath
from fsspec.implementations.memory import MemoryFileSystem
import ml_collections
import pytest

from cm3leon_jax import config, results
from cm3leon_jax.sweep import runner as sweep, spec as sweeps
from cm3leon_jax.sweep.spec import product, zip_
import locations

REPO = locations.ROOT

# --------------------------------------------------------------------------------------------------
# Writing sweeps
# --------------------------------------------------------------------------------------------------


def test_product_varies_the_last_factor_fastest():
    assert product({"a.x": [1, 2]}, {"b.y": ["p", "q"]}) == [
        {"a.x": 1, "b.y": "p"}, {"a.x": 1, "b.y": "q"}, {"a.x": 2, "b.y": "p"},
        {"a.x": 2, "b.y": "q"}]
    assert product({"a.x": [1, 2], "b.y": [3]}) == [{"a.x": 1, "b.y": 3}, {"a.x": 2, "b.y": 3}]


def test_zip_pairs_entries_and_combines_with_product():
    paired = zip_({"train.lr": [1e-3, 3e-4], "train.warmup": [100, 400]})
    assert paired == [{"train.lr": 1e-3, "train.warmup": 100},
                      {"train.lr": 3e-4, "train.warmup": 400}]
    combined = product({"model.d": [64, 128]}, paired)
    assert len(combined) == 4 and combined[1] == {"model.d": 64, "train.lr": 3e-4,
                                                  "train.warmup": 400}


def test_helpers_reject_mistakes_clearly():
    with pytest.raises(sweeps.SweepError, match="different lengths"):
        zip_({"a.x": [1, 2], "a.y": [1]})
    with pytest.raises(sweeps.SweepError, match="'a.x' is set by two factors"):
        product({"a.x": [1]}, [{"a.x": 2}])
    with pytest.raises(sweeps.SweepError, match="must be a list"):
        product({"data.source": "folder"})


def test_entries_are_checked():
    with pytest.raises(sweeps.SweepError, match="non-empty list"):
        sweeps.check_entries([], "s.py")
    with pytest.raises(sweeps.SweepError, match="entry 1: 'data image_size' is not a dotted"):
        sweeps.check_entries([{"a.b": 1}, {"data image_size": 2}], "s.py")
    with pytest.raises(sweeps.SweepError, match="without 'config.'"):
        sweeps.check_entries([{"config.data.seed": 1}], "s.py")
    with pytest.raises(sweeps.SweepError, match="cannot be passed on a command line"):
        sweeps.check_entries([{"a.b": {"nested": 1}}], "s.py")


def test_run_names_are_safe_and_unique():
    assert sweeps.run_name({"data.image_size": 32, "train.lr": 1e-3}) == \
        "data.image_size=32,train.lr=0.001"
    assert sweeps.run_name({"data.folder": "/home/me/my pics", "m.use": True}) == \
        "data.folder=home_me_my_pics,m.use=true"
    assert sweeps.run_name({"model.shape": (2, 4)}) == "model.shape=2_4"
    assert sweeps.run_name({}) == "base"
    long = sweeps.run_name({f"section.field_{i}": i for i in range(40)})
    assert len(long) == 200 and long != sweeps.run_name({f"section.field_{i}": i for i in range(41)})
    with pytest.raises(sweeps.SweepError, match="entries 0 and 2 both map"):
        sweeps.run_names([{"a.b": 1}, {"a.b": 2}, {"a.b": 1}], "s.py")


def test_values_are_formatted_as_ml_collections_parses_them():
    assert sweeps.override_flags({"a.b": True, "a.c": 1e-5, "a.d": (1, 2), "a.e": "x y", "a.f": 3}) \
        == ["--config.a.b=true", "--config.a.c=1e-05", "--config.a.d=(1, 2)", "--config.a.e=x y",
            "--config.a.f=3"]


def test_entries_are_checked_against_the_config():
    cfg = ml_collections.ConfigDict({"data": {"image_size": 32, "source": "shapes"}})
    cfg.lock()
    sweeps.check_against_config(cfg, [{"data.image_size": 16}], "s.py")
    with pytest.raises(sweeps.SweepError, match="no field config.data.imagesize; did you mean "
                                                "image_size?"):
        sweeps.check_against_config(cfg, [{"data.imagesize": 16}], "s.py")
    with pytest.raises(sweeps.SweepError, match="no field config.data.depth; fields there: "
                                                "image_size, source"):
        sweeps.check_against_config(cfg, [{"data.depth": 16}], "s.py")
    with pytest.raises(sweeps.SweepError, match="no section config.model"):
        sweeps.check_against_config(cfg, [{"model.d_model": 16}], "s.py")
    with pytest.raises(sweeps.SweepError, match="entry 1: config.data.image_size='big' does not fit"):
        sweeps.check_against_config(cfg, [{"data.image_size": 16}, {"data.image_size": "big"}],
                                    "s.py")
    assert cfg.data.image_size == 32  # checking never changes the config


def test_demo_sweep_fits_the_demo_config():
    entries = sweeps.load_sweep(str(REPO / "experiments/sweeps/demo_image_size.py"))
    assert len(entries) == 4 and {e["data.image_size"] for e in entries} == {16, 32}
    demo = _load_config(REPO / "experiments/demo.py")
    sweeps.check_against_config(demo, entries, "demo_image_size.py")
    for entry in entries:  # every run also passes the data section's own checks
        trial = ml_collections.ConfigDict(demo.to_dict())
        for field, value in entry.items():
            section, name = field.split(".")
            trial[section][name] = value
        config.data_config(trial)


def _load_config(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# --------------------------------------------------------------------------------------------------
# The runner, end to end, with a throwaway entry module
# --------------------------------------------------------------------------------------------------

FAKE_ENTRY = """
import os
from cm3leon_jax import cli, results

def main(cfg, workdir):
    with open(os.environ["FAKE_TRAIN_CALLS"], "a") as calls:
        calls.write(os.path.basename(workdir) + "\\n")
    if cfg.train.lr > 1:
        raise SystemExit(3)  # a diverging run
    results.write_metrics(workdir, "train", {"loss": cfg.train.lr * cfg.model.width,
                                             "steps": cfg.train.steps})

if __name__ == "__main__":
    cli.run(main)
"""

TINY_CONFIG = """
import ml_collections

def get_config(arg=None):
    return ml_collections.ConfigDict({"model": {"width": 8}, "train": {"lr": 0.1, "steps": 10}})
"""

TINY_SWEEP = """
from cm3leon_jax.sweep.spec import product

def get_sweep():
    return product({"model.width": [8, 16], "train.lr": [0.5, 2.0]})
"""


@pytest.fixture
def project(tmp_path):
    """A config, a sweep and an entry module `fake_train` on PYTHONPATH, all in tmp_path."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "fake_train.py").write_text(FAKE_ENTRY)
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    (tmp_path / "tiny_sweep.py").write_text(TINY_SWEEP)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path / "modules")]),
               FAKE_TRAIN_CALLS=str(tmp_path / "calls.txt"))
    return tmp_path, env


def _sweep(project, *flags, workdir="runs"):
    tmp_path, env = project
    argv = [sys.executable, "-m", "cm3leon_jax.sweep", f"--config={tmp_path / 'tiny.py'}",
            f"--sweep={tmp_path / 'tiny_sweep.py'}", "--entry=fake_train",
            f"--workdir={tmp_path / workdir}", *flags]
    return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def _calls(tmp_path):
    path = tmp_path / "calls.txt"
    return path.read_text().split() if path.exists() else []


@pytest.mark.integration
def test_sweep_runs_skips_finished_runs_and_writes_csv(project):
    tmp_path, _ = project
    first = _sweep(project, "--config.train.steps=20")
    assert first.returncode == 1, first.stderr  # two runs diverge on purpose
    assert "2 run(s) failed: model.width=8,train.lr=2.0, model.width=16,train.lr=2.0" in first.stderr
    names = ["model.width=8,train.lr=0.5", "model.width=8,train.lr=2.0",
             "model.width=16,train.lr=0.5", "model.width=16,train.lr=2.0"]
    assert _calls(tmp_path) == names
    assert results.read_metrics(str(tmp_path / "runs" / names[2])) == {
        "train": {"loss": 8.0, "steps": 20}}  # base override and sweep overrides both arrived

    rows = list(csv.reader(io.StringIO((tmp_path / "runs/sweep_summary.csv").read_text())))
    assert rows == [
        ["run", "status", "model.width", "train.lr", "train/loss", "train/steps"],
        [names[0], "ran", "8", "0.5", "4.0", "20"],
        [names[1], "failed (exit 3)", "8", "2.0", "", ""],
        [names[2], "ran", "16", "0.5", "8.0", "20"],
        [names[3], "failed (exit 3)", "16", "2.0", "", ""]]
    table = first.stdout[first.stdout.index("run "):]
    assert table.splitlines()[2].split() == [names[0], "ran", "8", "0.5", "4", "20"]

    second = _sweep(project, "--config.train.steps=20")
    assert second.returncode == 1
    assert _calls(tmp_path) == names + [names[1], names[3]]  # only the failed runs ran again
    assert f"{names[0]}: metrics.json exists, skipped" in second.stdout
    rows = list(csv.reader(io.StringIO((tmp_path / "runs/sweep_summary.csv").read_text())))
    assert [row[1] for row in rows[1:]] == ["finished earlier", "failed (exit 3)",
                                           "finished earlier", "failed (exit 3)"]


@pytest.mark.integration
def test_finished_stage_reruns_runs_without_that_stage(project):
    tmp_path, _ = project
    results.write_metrics(str(tmp_path / "runs/model.width=8,train.lr=0.5"), "data", {"n": 1})
    _sweep(project, "--finished_stage=train")
    assert _calls(tmp_path)[0] == "model.width=8,train.lr=0.5"  # holds metrics.json, not `train`
    assert results.read_metrics(str(tmp_path / "runs/model.width=8,train.lr=0.5")) == {
        "data": {"n": 1}, "train": {"loss": 4.0, "steps": 10}}


@pytest.mark.integration
def test_sweep_errors_before_running_anything(project):
    tmp_path, _ = project
    conflict = _sweep(project, "--config.train.lr=0.3")
    assert conflict.returncode == 2
    assert "config.train.lr is set both on the command line and by the sweep" in conflict.stderr
    (tmp_path / "tiny_sweep.py").write_text(
        "def get_sweep():\n    return [{'model.widht': 4}]\n")
    typo = _sweep(project)
    assert typo.returncode == 2
    assert "entry 0: config has no field config.model.widht; did you mean width?" in typo.stderr
    missing = _sweep(project, "--entry=cm3leon_jax.no_such_stage")
    assert missing.returncode == 2
    assert "--entry cm3leon_jax.no_such_stage: no such module here" in missing.stderr
    assert _calls(tmp_path) == []


@pytest.mark.integration
def test_print_commands_prints_launch_lines_for_missing_runs(project):
    tmp_path, _ = project
    results.write_metrics(str(tmp_path / "runs/model.width=8,train.lr=0.5"), "train", {"loss": 1})
    printed = _sweep(project, "--print_commands", "--tpu_name=my-tpu", "--tpu_zone=us-central2-b",
                     "--launch_flags=--dry-run --env XLA_FLAGS=--xla_dump_to=/tmp/x")
    assert printed.returncode == 0, printed.stderr
    assert _calls(tmp_path) == []
    lines = printed.stdout.splitlines()
    assert len(lines) == 3  # the finished run is skipped
    assert "skipping model.width=8,train.lr=0.5" in printed.stderr
    assert shlex.split(lines[0]) == [
        "tpu/launch.sh", "--name", "my-tpu", "--zone", "us-central2-b", "--dry-run", "--env",
        "XLA_FLAGS=--xla_dump_to=/tmp/x", "--run-label", "model.width=8,train.lr=2.0", "--",
        "python", "-m", "fake_train", f"--config={tmp_path / 'tiny.py'}", "--config.model.width=8",
        "--config.train.lr=2.0", f"--workdir={tmp_path / 'runs/model.width=8,train.lr=2.0'}"]


def test_config_paths_in_the_repository_become_relative():
    assert sweep.config_arg_in_repo(str(REPO / "experiments/demo.py")) == "experiments/demo.py"
    assert sweep.config_arg_in_repo(str(REPO / "experiments/demo.py") + ":tiny") == \
        "experiments/demo.py:tiny"


# --------------------------------------------------------------------------------------------------
# gs:// paths, on fsspec's in-memory file system standing in for Cloud Storage
# --------------------------------------------------------------------------------------------------


class FakeCloudStorage(MemoryFileSystem):
    """fsspec's in-memory file system answering to gs:// (its own store, emptied per test)."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return super()._strip_protocol(path)


@pytest.fixture
def fake_gcs(monkeypatch):
    """Routes epath's gs:// through fsspec (not tf.io.gfile) to `FakeCloudStorage`."""
    from etils.epath import backend, gpath

    monkeypatch.setattr(FakeCloudStorage, "store", {})
    monkeypatch.setattr(FakeCloudStorage, "pseudo_dirs", [""])
    registry = importlib.import_module("fsspec.registry")._registry  # fsspec.registry is a view
    monkeypatch.setitem(registry, "gs", FakeCloudStorage)
    monkeypatch.setitem(registry, "gcs", FakeCloudStorage)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    type(backend.fsspec_backend)._get_filesystem.cache_clear()
    yield FakeCloudStorage
    type(backend.fsspec_backend)._get_filesystem.cache_clear()


@pytest.mark.parametrize("where", ["local", "gs"])
def test_runner_summary_and_metrics_on_any_file_system(where, tmp_path, request):
    if where == "gs":
        store = request.getfixturevalue("fake_gcs").store
        root = "gs://bucket/sweeps/tiny"
    else:
        store = None
        root = str(tmp_path / "sweeps" / "tiny")
    runs = sweep.plan_runs(product({"model.width": [8, 16]}), root, "s.py")
    assert runs[1].workdir == f"{root}/model.width=16"

    executed = []

    def execute(command):  # stands in for the entry process: writes where --workdir points
        workdir = command[-1].removeprefix("--workdir=")
        executed.append(workdir)
        results.write_metrics(workdir, "train", {"loss": 1.0 / len(executed)})
        return 0

    def command_for(run):
        return sweep.entry_command("python", "fake_train", "tiny.py", {}, run)

    sweep.run_all(runs, command_for, execute)
    assert executed == [run.workdir for run in runs]
    assert results.read_metrics(runs[1].workdir) == {"train": {"loss": 0.5}}
    table, csv_path = sweep.summarize(runs, root)
    assert str(csv_path) == f"{root}/sweep_summary.csv"
    assert epath.Path(csv_path).read_text().splitlines() == [
        "run,status,model.width,train/loss", "model.width=8,ran,8,1.0", "model.width=16,ran,16,0.5"]
    assert "model.width=16  ran" in table

    sweep.run_all(runs, command_for, execute)  # everything finished: nothing runs again
    assert len(executed) == 2 and [run.status for run in runs] == ["finished earlier"] * 2
    if store is not None:
        assert "/bucket/sweeps/tiny/model.width=8/metrics.json" in store
        assert not (tmp_path / "bucket").exists()


@pytest.mark.parametrize("where", ["local", "gs"])
def test_write_metrics_merges_stages(where, tmp_path, request):
    if where == "gs":
        request.getfixturevalue("fake_gcs")
        run = "gs://bucket/run"
    else:
        run = str(tmp_path / "run")
    results.write_metrics(run, "data", {"examples": 10})
    assert results.read_metrics(run) == {"data": {"examples": 10}}
    results.write_metrics(run, "train", {"loss": float("nan")})
    assert results.read_metrics(run) == {"data": {"examples": 10}, "train": {"loss": "nan"}}
    assert [p.name for p in epath.Path(run).iterdir()] == ["metrics.json"]


def test_read_metrics_of_an_empty_gs_workdir(fake_gcs):
    assert results.read_metrics("gs://bucket/elsewhere") == {}


def test_text_table_aligns_and_shortens_numbers():
    columns, cells = sweeps.summary_table([
        {"run": "a", "status": "ran", "x/loss": 0.123456789},
        {"run": "bb", "status": "failed (exit 1)", "x/acc": [1, 2]}])
    assert columns == ["run", "status", "x/loss", "x/acc"]
    assert cells == [["a", "ran", "0.123456789", ""], ["bb", "failed (exit 1)", "", "1 2"]]
    assert sweeps.format_text_table(columns, cells) == textwrap.dedent("""\
        run  status           x/loss  x/acc
        ---  ---------------  ------  -----
        a    ran              0.1235
        bb   failed (exit 1)          1 2""")


def test_width_batch_sweep_fits_the_tiny_pretraining_config():
    entries = sweeps.load_sweep(str(REPO / "experiments/sweeps/pretrain_width_batch_level1.py"))
    tokens = {e["train.batch_size"] * e["train.steps"] for e in entries}
    assert len(entries) == 3 and tokens == {3200}  # equal rows, hence tokens, in every run
    pretrain = _load_config(REPO / "experiments/pretrain_tiny.py")
    sweeps.check_against_config(pretrain, entries, "pretrain_width_batch_level1.py")
    for entry in entries:
        trial = ml_collections.ConfigDict(pretrain.to_dict())
        for field, value in entry.items():
            section, name = field.split(".")
            trial[section][name] = value
        config.model_config(trial)
        config.train_config(trial)
