"""Config validation: bad values fail before anything is built, naming the field and the fix."""

import re
import subprocess
import sys

import ml_collections
import pytest

from cm3leon_jax import config
import locations

REPO = locations.ROOT


def _data(**fields):
    return config.data_config(ml_collections.ConfigDict({"data": fields}))


@pytest.mark.parametrize("fields,message", [
    ({"source": "laion"}, r"config.data.source='laion': must be one of 'shapes', 'folder'"),
    ({"image_size": 20}, r"config.data.image_size=20: must be divisible by"),
    ({"image_size": 512}, r"config.data.image_size=512: must be in \[16, 256\]"),
    ({"num_train": -5}, r"config.data.num_train=-5: must be positive"),
    ({"num_train": "many"}, r"config.data.num_train='many': must be of type int"),
    ({"max_objects": 4}, r"config.data.max_objects=4: must be in \[1, 3\]"),
    ({"source": "folder"}, r"config.data.folder='': must name the user folder"),
    ({"imag_size": 32}, r"config.data has unknown field\(s\) imag_size; known fields: .*image_size"),
])
def test_bad_data_values_are_named(fields, message):
    with pytest.raises(config.ConfigError, match=message):
        _data(**fields)


def test_missing_section_is_named():
    with pytest.raises(config.ConfigError, match="config.data is missing"):
        config.data_config(ml_collections.ConfigDict({}))


def test_defaults_and_int_for_float():
    data = _data(textured_fraction=1)
    assert data.textured_fraction == 1.0 and isinstance(data.textured_fraction, float)
    assert data.image_size == 32


def test_every_experiment_config_loads():
    """Each experiments/*.py has get_config(arg) and a docstring with its command."""
    import importlib.util
    for path in sorted((REPO / "experiments").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.__doc__ and "python -m cm3leon_jax." in module.__doc__, path
        cfg = module.get_config(None)
        assert isinstance(cfg, ml_collections.ConfigDict), path
        if "data" in cfg:
            if cfg.data.get("source") == "folder" and not cfg.data.folder:
                with pytest.raises(config.ConfigError, match="must name the user folder"):
                    config.data_config(cfg)  # the user's folder is theirs to name
                cfg.data.folder = "my_data"
            config.data_config(cfg)


@pytest.mark.integration
def test_command_line_override_error_exits_2_with_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cm3leon_jax.demo", "--workdir", str(tmp_path),
         "--config.data.image_size=20"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config.data.image_size=20: must be divisible by" in result.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_complete_adds_every_typed_field_with_its_default_and_keeps_values():
    cfg = ml_collections.ConfigDict({"data": {"image_size": 64}, "other": {"x": 1}})
    config.complete(cfg)
    assert cfg.data.image_size == 64 and cfg.data.folder == "" and cfg.data.max_objects == 3
    assert set(cfg.data) == {f.name for f in config.dataclasses.fields(config.DataConfig)}
    assert "model" not in cfg and dict(cfg.other) == {"x": 1}
    assert config.data_config(cfg) == config.DataConfig(image_size=64)


def _shipped_configs():
    return sorted((REPO / "experiments").glob("*.py"))


def _scalar_override(name, field):
    """`--config.<name>.<field>=<its default>` for a scalar field, else None."""
    default = field.default
    if isinstance(default, bool) or not isinstance(default, (int, float, str)):
        return None
    return f"--config.{name}.{field.name}={default}"


def test_every_field_of_every_section_is_settable_from_the_command_line():
    """What `cli` does to each shipped config: the file's sections completed, the sections the
    command line names added, then overrides of any field of any typed section parse (the
    README's `--config.data.source=folder --config.data.folder=...`, on every config file)."""
    from absl import flags as absl_flags
    from cm3leon_jax import cli

    for path in _shipped_configs():
        cfg = cli._CompletingParser("config", ["prog"]).parse(str(path))  # noqa: SLF001
        for name, cls in config.SECTIONS.items():
            if name in cfg:
                for field in config.dataclasses.fields(cls):
                    assert field.name in cfg[name], (path.name, name, field.name)
        overrides = ["--config.data.source=folder", "--config.data.folder=my_data",
                     "--config.data.max_objects=1"]
        overrides += [override for name, cls in config.SECTIONS.items() if name != "data"
                      for field in config.dataclasses.fields(cls)
                      if (override := _scalar_override(name, field))]
        argv = ["prog", f"--config={path}", *overrides]
        values = absl_flags.FlagValues()
        holder = cli.define_config_flag(values, sys_argv=argv)
        values(argv)
        data = holder.value.data
        assert (data.source, data.folder, data.max_objects) == ("folder", "my_data", 1), path
        assert set(config.SECTIONS) <= set(holder.value), path


def test_the_demos_own_sections_are_settable_too():
    """`--config.demo.pretrain_train.<field>` and the super-resolution stage's nested sections."""
    from absl import flags as absl_flags
    from cm3leon_jax import cli

    argv = ["prog", f"--config={REPO / 'experiments' / 'demo.py'}",
            "--config.demo.pretrain_train.seed=7", "--config.demo.sft_train.log_every=3",
            "--config.demo.superres.high_tokenizer_train.seed=5",
            "--config.demo.superres.upsampler.train.on_nonfinite=skip"]
    values = absl_flags.FlagValues()
    holder = cli.define_config_flag(values, sys_argv=argv)
    values(argv)
    demo = holder.value.demo
    assert (demo.pretrain_train.seed, demo.sft_train.log_every) == (7, 3)
    assert demo.superres.high_tokenizer_train.seed == 5
    assert demo.superres.upsampler.train.on_nonfinite == "skip"
    assert config.demo_config(holder.value).pretrain_train["seed"] == 7


@pytest.mark.parametrize("override, message", [
    ("--config.bogus.x=1", "--config.bogus.x: config has no field 'bogus'"),
    ("--config.model.no_such_field=1", "config.model has no field 'no_such_field' (it has: "),
])
def test_unknown_override_names_the_field(override, message):
    from absl import flags as absl_flags
    from cm3leon_jax import cli

    argv = ["prog", f"--config={REPO / 'experiments' / 'cm3leon_350m.py'}", override]
    values = absl_flags.FlagValues()
    cli.define_config_flag(values, sys_argv=argv)
    with pytest.raises(absl_flags.IllegalFlagValueError, match=re.escape(message)):
        values(argv)


def test_demo_stages_are_the_configs_stages_in_order():
    from cm3leon_jax import demo  # noqa: PLC0415

    assert tuple(demo.STAGES) == config.DEMO_STAGES


def test_literal_fields_name_their_choices():
    cfg = ml_collections.ConfigDict({"model": {"attention": "flash"}})
    with pytest.raises(config.ConfigError,
                       match=r"config\.model\.attention='flash': must be one of 'auto', 'xla'"):
        config.model_config(cfg)
    cfg = ml_collections.ConfigDict({"prepare": {"splits": ("train", "dev")}})
    with pytest.raises(config.ConfigError, match=r"config\.prepare\.splits=.*must be of type"):
        config.prepare_config(cfg)


def test_an_unchecked_field_type_is_refused():
    with pytest.raises(TypeError, match="not checked"):
        config._type_ok({"a": 1}, dict)  # noqa: SLF001


def test_one_sampling_default_for_every_command():
    from cm3leon_jax.evaluation.tasks import EvalSettings  # noqa: PLC0415

    settings = EvalSettings()
    assert (settings.temperature, settings.top_p, settings.cfg_scale) == (
        config.IMAGE_SAMPLING.temperature, config.IMAGE_SAMPLING.top_p,
        config.IMAGE_SAMPLING.cfg_scale)
    assert settings.image_sampling() == config.IMAGE_SAMPLING
    samples = config.SamplesConfig(top_p=0.5, cfg_scale=2.0, num_captions=3)
    assert samples.sampling() == config.SamplingConfig(top_p=0.5, cfg_scale=2.0)
    with pytest.raises(config.ConfigError, match=r"config\.samples\.top_p=0\.0"):
        config.samples_config(ml_collections.ConfigDict({"samples": {"top_p": 0.0}}))


def test_demo_settings_are_checked_before_anything_runs():
    from cm3leon_jax import demo, experiment_files  # noqa: PLC0415

    cfg = experiment_files.config(str(REPO / "experiments" / "x.py"), "demo")
    demo.validate(cfg)
    cfg.demo.top_p = 0.0
    with pytest.raises(config.ConfigError, match=r"demo\.top_p=0\.0: must be in \(0, 1\]"):
        demo.validate(cfg)
