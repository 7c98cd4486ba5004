"""The workdir map (`cm3leon_jax/paths.py`): the one place the layout is written."""

import pathlib
import re

from cm3leon_jax import paths
import locations

README = locations.ROOT / "README.md"


def test_defaults_and_overrides(tmp_path):
    work = paths.Workdir(str(tmp_path))
    assert work.prepared == tmp_path / "prepared"
    assert work.prepared_manifest == tmp_path / "prepared" / "manifest.json"
    assert work.vocab() == tmp_path / "tokenizers" / "vocab"
    assert work.vocab("/elsewhere/vocab") == pathlib.Path("/elsewhere/vocab")
    assert work.vocab_candidates() == (tmp_path / "tokenizers" / "vocab", tmp_path / "vocab")
    assert work.retrieval_index() == tmp_path / "retrieval_index"
    assert work.neighbour_table("train", "/idx") == pathlib.Path("/idx/neighbours_train.npz")
    assert work.checkpoints("sft") == tmp_path / "sft" / "checkpoints"
    assert work.upsampler == tmp_path / "superres" / "upsampler"
    assert work.tfds() == tmp_path / "tfds" and work.tfds("/d") == pathlib.Path("/d")


def test_has_checkpoint_needs_a_step_directory(tmp_path):
    work = paths.Workdir(tmp_path)
    assert not work.has_checkpoint("pretrain")
    work.checkpoints("pretrain").mkdir(parents=True)
    assert not work.has_checkpoint("pretrain")
    (work.checkpoints("pretrain") / "12").mkdir()
    assert work.has_checkpoint("pretrain")


def test_first_existing(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "vocab.json").write_text("{}")
    found = paths.first_existing([tmp_path / "a", tmp_path / "b"], "vocab.json")
    assert found == tmp_path / "b"
    assert paths.first_existing([tmp_path / "a"], "vocab.json") is None


def test_readme_layout_is_drawn_from_the_map():
    block = re.search(r"<!-- workdir-layout -->\n```\n(.*?)\n```\n<!-- /workdir-layout -->",
                      README.read_text(), re.S)
    assert block, "README.md lost its workdir-layout block"
    assert block.group(1) == paths.describe(), (
        "README.md's workdir layout differs from cm3leon_jax/paths.py: paste paths.describe()")
    for path, _, _ in paths.LAYOUT:
        assert path in block.group(1)


def test_no_stage_spells_the_layout_by_hand():
    """Workdir entries appear as path literals only in paths.py (help texts and docstrings may
    name them): no `/ "prepared"`, `os.path.join(w, "generated")` or `X_DIR = "evaluate"`."""
    package = pathlib.Path(paths.__file__).parent
    names = sorted({part.strip().rstrip("/") for entry, _, _ in paths.LAYOUT
                    for part in entry.split(",")} | {paths.CHECKPOINTS})
    quoted = "|".join(re.escape(name) for name in names)
    literal = re.compile(rf"""(/ |os\.path\.join\([^)]*, |_DIR = )["']({quoted})["']""")
    offences = [f"{path.relative_to(package)}:{number}: {line.strip()}"
                for path in package.rglob("*.py") if path.name != "paths.py"
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if literal.search(line)]
    assert offences == [], "\n".join(offences)


def test_checkpoint_dirs_of_a_run_a_checkpoints_folder_or_a_project(tmp_path):
    run = tmp_path / "pretrain"
    (run / "checkpoints").mkdir(parents=True)
    assert paths.checkpoint_dirs(run) == [(run / "checkpoints", "pretrain")]
    assert paths.checkpoint_dirs(run / "checkpoints") == [(run / "checkpoints", "pretrain")]
    assert paths.checkpoint_dirs(tmp_path) == [(tmp_path / "sft" / "checkpoints", "sft"),
                                               (tmp_path / "pretrain" / "checkpoints", "pretrain")]
    assert paths.checkpoint_dirs(tmp_path, "pretrain") == [(run / "checkpoints", "pretrain")]
