"""The embedded `shapes` data set: determinism, disjoint splits, consistent annotations."""

import numpy as np
import pytest

from cm3leon_jax import config
from cm3leon_jax.data.sources import catalog
from cm3leon_jax.data.sources.shapes import builder, render, scenes, verifier

import ml_collections


def _data(**overrides):
    fields = dict(num_train=60, num_validation=20, num_test=20, seed=3)
    fields.update(overrides)
    return config.data_config(ml_collections.ConfigDict({"data": fields}))


def test_same_seed_same_bytes_in_two_builds(tmp_path):
    data = _data()
    first = list(catalog.numpy_examples(data, str(tmp_path / "a"), "train"))
    second = list(catalog.numpy_examples(data, str(tmp_path / "b"), "train"))
    assert [e["id"] for e in first] == [e["id"] for e in second]
    for a, b in zip(first, second):
        assert a["image"].tobytes() == b["image"].tobytes()
        assert a["edit"]["image"].tobytes() == b["edit"]["image"].tobytes()
        assert a["caption"] == b["caption"]
    other = list(catalog.numpy_examples(_data(seed=4), str(tmp_path / "a"), "train"))
    assert {e["caption"] for e in other} != {e["caption"] for e in first}


def test_splits_are_disjoint_and_sized(tmp_path):
    data = _data(num_train=200, num_validation=60, num_test=60)
    images = {}
    for split, size in (("train", 200), ("validation", 60), ("test", 60)):
        examples = list(catalog.numpy_examples(data, str(tmp_path), split))
        assert len(examples) == size
        images[split] = {e["image"].tobytes() for e in examples}
    assert not images["train"] & images["validation"]
    assert not images["train"] & images["test"]
    assert not images["validation"] & images["test"]


def test_captions_objects_questions_and_edits_agree(tmp_path):
    for example in catalog.numpy_examples(_data(), str(tmp_path), "train"):
        keys = builder.decode_objects(example["objects"])
        assert 1 <= len(keys) <= 3
        assert sorted(scenes.parse_caption(example["caption"])) == sorted(keys)
        assert verifier.matches(example["image"], keys)
        edited = builder.decode_objects(example["edit"]["objects"])
        assert verifier.matches(example["edit"]["image"], edited)
        assert edited != keys, example["edit"]["instruction"]
        qa = dict(zip(example["questions"]["question"], example["questions"]["answer"]))
        assert qa["how many objects are there?"] == scenes.NUMBER_WORDS[len(keys)]
        for question, answer in qa.items():
            # No question names its own answer (e.g. "what colour is the red circle?").
            if answer not in ("yes", "no") and not question.startswith("how many"):
                assert answer not in question, (question, answer)
        assert example["license"] == "CC0-1.0" and example["source"].startswith("generated")


def test_edit_changes_exactly_what_the_instruction_says():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = scenes.sample_scene(rng)
        instruction, edited = scenes.sample_edit(scene, rng)
        before, after = set(o.key for o in scene.objects), set(o.key for o in edited.objects)
        if instruction.startswith("remove"):
            assert len(after) == len(before) - 1 and after < before
        else:
            assert len(before - after) == 1 and len(after - before) == 1
            (old,), (new,) = before - after, after - before
            changed = [i for i in range(4) if old[i] != new[i]]
            expected = {"make": None, "move": [3]}[instruction.split()[0]]
            if expected is not None:
                assert changed == expected
            else:
                assert changed in ([1], [2])  # colour or size


def test_each_grid_cell_holds_at_most_one_object_at_every_size():
    rng = np.random.default_rng(1)
    for _ in range(100):
        scene = scenes.sample_scene(rng)
        cells = [o.position for o in scene.objects]
        assert len(cells) == len(set(cells))
    for size in (32, 64, 128, 256):
        image = render.render(scene, size)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8


def test_parse_caption_rejects_other_text():
    assert scenes.parse_caption("a cat on a mat") is None
    assert scenes.parse_caption("a small red circle at the top left and a large blue square in the "
                                "centre") == [("circle", "red", "small", 0),
                                              ("square", "blue", "large", 4)]


@pytest.mark.parametrize("size", [32, 64])
def test_rendering_at_two_sizes_shows_the_same_scene(size):
    rng = np.random.default_rng(2)
    scene = scenes.sample_scene(rng)
    keys = [o.key for o in scene.objects]
    assert verifier.matches(render.render(scene, size), keys)


def test_levels_count_object_layouts_and_set_the_data_fields(tmp_path):
    from cm3leon_jax.data.sources.shapes import levels

    assert [levels.LEVELS[n].object_layouts for n in (1, 2, 3)] == [432, 83_376, 9_373_104]
    assert levels.parse("level1") == 1 and levels.parse(2) == 2 and levels.parse(None) == 3
    with pytest.raises(ValueError, match="unknown shapes level 'level4'.*level1, level2, level3"):
        levels.parse("level4")
    data = levels.apply(ml_collections.ConfigDict({"image_size": 32}), "level1")
    assert (data.max_objects, data.textured_fraction) == (1, 0.0)
    level1 = config.data_config(ml_collections.ConfigDict(
        {"data": dict(data, num_train=40, num_validation=4, num_test=4)}))
    examples = list(catalog.numpy_examples(level1, str(tmp_path), "train"))
    assert len(examples) == 40
    for example in examples:
        objects = builder.decode_objects(example["objects"])
        assert len(objects) == 1
        corners = example["image"][[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners == corners[0]).all(), "a level-1 background is plain"
