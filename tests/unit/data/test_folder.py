"""User folders: every kind of bad input is skipped and counted; the good rest becomes the data set."""

import json

import numpy as np
from PIL import Image
import ml_collections
import pytest

from cm3leon_jax import config
from cm3leon_jax.data.sources import catalog, folder, images


def _save(path, mode, size=(40, 30), colour=None):
    image = Image.new(mode, size, colour)
    image.save(path)


@pytest.fixture
def user_folder(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    _save(root / "rgb.png", "RGB", colour=(200, 10, 10))
    Image.new("CMYK", (30, 50), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    _save(root / "grey.png", "L", colour=128)
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 255] * 256)
    palette.save(root / "palette.png")
    Image.new("RGBA", (32, 32), (0, 255, 0, 0)).save(root / "sub" / "alpha.png")
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_bytes(b"this is not an image at all")
    full = root / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(full)
    (root / "truncated.jpg").write_bytes(full.read_bytes()[:300])
    lines = [
        {"image": "rgb.png", "caption": "a red picture", "license": "CC-BY-4.0",
         "source": "https://example.org/rgb", "photographer": "ann"},
        {"image": "cmyk.jpg", "caption": "a cmyk picture"},
        {"image": "grey.png", "caption": "a grey picture"},
        {"image": "palette.png", "caption": "a palette picture"},
        {"image": "sub/alpha.png", "caption": "transparent green"},
        {"image": "empty.png", "caption": "empty"},
        {"image": "text.png", "caption": "not an image"},
        {"image": "truncated.jpg", "caption": "truncated"},
        {"image": "missing.png", "caption": "missing"},
    ]
    text = "\n".join(json.dumps(line) for line in lines)
    text += '\n{"image": "rgb.png", "caption": \n[1, 2]\n{"caption": "no image field"}\n'
    (root / "captions.jsonl").write_text(text)
    (root / "dataset.json").write_text(json.dumps({"license": "CC0-1.0", "attribution": "us"}))
    return root


def _data(root, **overrides):
    fields = dict(source="folder", folder=str(root), image_size=16, validation_fraction=0.0,
                  test_fraction=0.0)
    fields.update(overrides)
    return config.data_config(ml_collections.ConfigDict({"data": fields}))


def test_good_files_kept_bad_files_counted(user_folder, tmp_path):
    data = _data(user_folder)
    built = catalog.prepared_builder(data, str(tmp_path / "work"))
    examples = {e["id"]: e for e in catalog.numpy_examples(data, str(tmp_path / "work"), "train")}
    assert set(examples) == {"folder/rgb.png", "folder/cmyk.jpg", "folder/grey.png",
                             "folder/palette.png", "folder/sub/alpha.png"}
    for example in examples.values():
        assert example["image"].shape == (16, 16, 3) and example["image"].dtype == np.uint8
    assert tuple(examples["folder/rgb.png"]["image"][8, 8]) == (200, 10, 10)
    assert tuple(examples["folder/sub/alpha.png"]["image"][8, 8]) == (255, 255, 255)
    grey = examples["folder/grey.png"]["image"][8, 8]
    assert grey[0] == grey[1] == grey[2] == 128
    assert tuple(examples["folder/palette.png"]["image"][8, 8]) == (0, 0, 255)
    assert folder.skipped_by_reason(built) == {
        "empty file": 1, "not an image": 1, "truncated image": 1, "missing file": 1,
        folder.MALFORMED_LINE: 3}


def test_provenance_per_line_then_folder_default(user_folder, tmp_path):
    data = _data(user_folder)
    examples = {e["id"]: e for e in catalog.numpy_examples(data, str(tmp_path), "train")}
    rgb = examples["folder/rgb.png"]
    assert (rgb["license"], rgb["source"]) == ("CC-BY-4.0", "https://example.org/rgb")
    assert json.loads(rgb["extra"]) == {"photographer": "ann"}
    grey = examples["folder/grey.png"]
    assert (grey["license"], grey["attribution"], grey["source"]) == ("CC0-1.0", "us",
                                                                      "folder:grey.png")


def test_unknown_license_is_visible(user_folder, tmp_path):
    (user_folder / "dataset.json").unlink()
    data = _data(user_folder)
    examples = list(catalog.numpy_examples(data, str(tmp_path), "train"))
    licences = {e["id"]: e["license"] for e in examples}
    assert licences["folder/grey.png"] == "unknown"
    assert licences["folder/rgb.png"] == "CC-BY-4.0"


def test_splits_by_name_hash_are_stable(user_folder):
    names = [f"img{i}.png" for i in range(2000)]
    splits = [folder.split_of(n, 0.1, 0.1) for n in names]
    assert 0.05 < splits.count("test") / 2000 < 0.15
    assert splits == [folder.split_of(n, 0.1, 0.1) for n in names]


def test_missing_captions_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        catalog.builder(_data(tmp_path), str(tmp_path))


def test_empty_split_is_a_clear_error(user_folder, tmp_path):
    with pytest.raises(ValueError, match="test split .* is empty"):
        catalog.load(_data(user_folder), str(tmp_path), "test")


def test_decode_reasons(tmp_path):
    with pytest.raises(images.BadImage) as error:
        images.read(str(tmp_path / "nope.png"), 16)
    assert error.value.reason == "missing file"
    with pytest.raises(images.BadImage) as error:
        images.decode(b"GIF89a", "x.gif", 16)
    assert error.value.reason in ("truncated image", "not an image")
