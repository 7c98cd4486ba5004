"""Sources beyond the project's builders: tfds data sets by name and WebDataset tar shards."""

import io
import json
import tarfile

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from cm3leon_jax import config
from cm3leon_jax.data.sources import catalog
from cm3leon_jax.data import prepare
from cm3leon_jax.data.offline import provenance
from cm3leon_jax.data.sources import webdataset

import tiny_stack


def _data(**fields):
    return config.data_config(ml_collections.ConfigDict({"data": fields}))


def test_tfds_by_name_with_field_mapping(tmp_path):
    data = _data(source="tfds", tfds_name="coco_captions", caption_key="captions/text",
                 image_size=16, tfds_splits=("train", "val", "test"), default_license="CC-BY-4.0")
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        examples = list(catalog.numpy_examples(data, str(tmp_path), "train"))
        validation = list(catalog.numpy_examples(data, str(tmp_path), "validation"))
    assert len(examples) == 4 and len(validation) == 4
    for example in examples:
        assert example["image"].shape == (16, 16, 3) and example["image"].dtype == np.uint8
        assert example["caption"] and example["id"].startswith("coco_captions/")
        assert (example["source"], example["license"]) == ("tfds:coco_captions", "CC-BY-4.0")
    assert len({e["id"] for e in examples}) == 4


def test_tfds_missing_field_is_named(tmp_path):
    data = _data(source="tfds", tfds_name="coco_captions", caption_key="caption")
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(KeyError, match="field 'caption' not found"):
            list(catalog.iter_documents(data, str(tmp_path), "train"))


def _png(colour, size=(20, 24)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg():
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    good = 0
    for shard in range(2):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for i in range(12):
                key = f"{shard:05d}{i:04d}"
                _add(tar, f"{key}.png", _png((10 * i, 100, 200)))
                if i == 3:
                    _add(tar, f"{key}.json", b"{not json")
                elif i % 2:
                    _add(tar, f"{key}.json", json.dumps({"caption": f"picture {key}",
                                                         "license": "CC-BY-4.0",
                                                         "url": f"https://x.org/{key}"}).encode())
                    good += 1
                else:
                    _add(tar, f"{key}.txt", f"caption {key}".encode())
                    good += 1
            _add(tar, f"{shard:05d}9998.jpg", _jpeg()[:200])
            _add(tar, f"{shard:05d}9998.txt", b"broken")
            _add(tar, f"{shard:05d}9999.txt", b"text without image")
    return root, good


def test_webdataset_reads_good_samples_and_reports_bad(shards, tmp_path):
    root, good = shards
    data = _data(source="webdataset", webdataset=str(root / "*.tar"), image_size=16,
                 validation_fraction=0.0, test_fraction=0.0)
    examples = list(catalog.numpy_examples(data, str(tmp_path), "train"))
    assert len(examples) == good
    by_id = {e["id"]: e for e in examples}
    assert by_id["wds/000000001"]["license"] == "CC-BY-4.0"
    assert by_id["wds/000000001"]["source"] == "https://x.org/000000001"
    assert by_id["wds/000000000"]["caption"] == "caption 000000000"
    assert by_id["wds/000000000"]["license"] == "unknown"
    reasons = [item.reason for item in webdataset.read_shard(
        str(root / "00000.tar"), 16, "train", 0.0, 0.0,
        {"source": "", "license": "", "attribution": ""}) if not isinstance(item, dict)]
    assert sorted(reasons) == ["malformed json", "missing file", "truncated image"]


def test_missing_webdataset_is_a_clear_error(tmp_path):
    data = _data(source="webdataset", webdataset=str(tmp_path / "*.tar"))
    with pytest.raises(FileNotFoundError, match="matches no tar shard"):
        list(catalog.iter_documents(data, str(tmp_path), "train"))


def test_prepare_reads_webdataset_and_counts_bad_files(shards, tmp_path):
    root, good = shards
    vocab_dir = tmp_path / "vocab"
    tiny_stack.write_vocab(vocab_dir)
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(source="webdataset", webdataset=str(root / "*.tar"),
                                              validation_fraction=0.0, test_fraction=0.0))
    cfg.prepare = ml_collections.ConfigDict(dict(num_shards=2, encode_batch_size=8,
                                                 splits=("train",), retrieval="off",
                                                 vocab_dir=str(vocab_dir)))
    figures = prepare.prepare(cfg, str(tmp_path / "work"))
    assert figures["kept"] == {"train": good}
    assert figures["excluded"] == {"bad file: malformed json": 2, "bad file: missing file": 2,
                                   "bad file: truncated image": 2}
    card = provenance.read_card(str(tmp_path / "work"))
    assert card["splits"]["train"]["by_license"]["CC-BY-4.0"] == 10


def test_retrieval_embeds_webdataset_documents_without_a_count_ahead(shards, tmp_path):
    """A WebDataset split has no size before it is read: the embedding progress goes without a
    total instead of asking a tfds builder that does not exist."""
    import jax
    from cm3leon_jax.config import RetrievalConfig
    from cm3leon_jax.retrieval import corpus, encoder
    root, good = shards
    data = _data(source="webdataset", webdataset=str(root / "*.tar"), image_size=16,
                 validation_fraction=0.0, test_fraction=0.0)
    retrieval = RetrievalConfig(text_width=32, text_layers=1, text_heads=2, vision_width=32,
                                vision_layers=1, vision_heads=2, patch_size=8,
                                projection_dim=16, text_max_length=32)
    arch = encoder.architecture_for(retrieval, data.image_size)
    biencoder = encoder.BiEncoder(arch, encoder.init_params(arch, jax.random.key(0)), "test")
    embedded = corpus.embed_split(biencoder, data, str(tmp_path), "train", batch_size=8)
    assert 0 < len(embedded) <= good and embedded.embeddings.shape[1] == 16
