"""Documents by name: the one place that turns `config.data` into a tfds builder and a tf.data split.

Every later stage (tokenizers, retrieval, preparation, evaluation) reads documents through `load`,
so adding a source (tfds-by-name, WebDataset shards) means adding it here only.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cm3leon_jax import paths
from cm3leon_jax.config import DataConfig
from cm3leon_jax.data.sources import folder as folder_source
from cm3leon_jax.data.sources import images, webdataset
from cm3leon_jax.data.sources.shapes import builder as shapes_builder

SPLITS = ("train", "validation", "test")

tfds.disable_progress_bar()  # our own Progress lines and logs say what is happening


def data_dir(data: DataConfig, workdir: str) -> str:
    return str(paths.Workdir(workdir).tfds(data.data_dir))


def builder(data: DataConfig, workdir: str) -> tfds.core.DatasetBuilder:
    """The tfds builder for `data` (not yet built). `webdataset` has none."""
    if data.source == "shapes":
        config = shapes_builder.ShapesConfig.named(
            image_size=data.image_size, num_train=data.num_train,
            num_validation=data.num_validation, num_test=data.num_test, seed=data.seed,
            max_objects=data.max_objects, textured_fraction=data.textured_fraction)
        return shapes_builder.Shapes(config=config, data_dir=data_dir(data, workdir))
    if data.source == "folder":
        config = folder_source.FolderConfig.for_folder(
            folder=data.folder, image_size=data.image_size,
            validation_fraction=data.validation_fraction, test_fraction=data.test_fraction,
            default_license=data.default_license, default_source=data.default_source,
            default_attribution=data.default_attribution)
        return folder_source.Folder(config=config, data_dir=data_dir(data, workdir))
    if data.source == "tfds":
        return tfds.builder(data.tfds_name, data_dir=data.data_dir or None)
    raise ValueError(f"data.source={data.source!r} is not read through a tfds builder")


def name(data: DataConfig, workdir: str) -> str:
    """A readable name of the data set (for cards and logs)."""
    if data.source == "webdataset":
        return f"webdataset:{data.webdataset}"
    return builder(data, workdir).info.full_name


def prepared_builder(data: DataConfig, workdir: str) -> tfds.core.DatasetBuilder:
    """The builder, built on first use for the project's own sources (offline: generated or
    local). A tfds data set by name must already be built in `data.data_dir` (no downloads)."""
    result = builder(data, workdir)
    if data.source in ("shapes", "folder"):
        result.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return result


def _field(example: dict, key: str):
    value = example
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"config.data field {key!r} not found in the examples (keys: "
                           f"{', '.join(example)})")
        value = value[part]
    return value


def tfds_document(data: DataConfig, example: dict, index: int, split: str) -> dict:
    """An example of a tfds data set by name, in the project's document schema."""
    from PIL import Image  # noqa: PLC0415

    caption = _field(example, data.caption_key)
    if isinstance(caption, (list, np.ndarray)):
        caption = caption[0] if len(caption) else b""
    pixels = np.asarray(_field(example, data.image_key))
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    image = images.centre_crop_resize(images.to_rgb(Image.fromarray(pixels)), data.image_size)
    doc_id = example.get("tfds_id", f"{split}/{index}")
    return {"id": f"{data.tfds_name}/{_text(doc_id)}", "image": image, "caption": _text(caption),
            "source": f"tfds:{data.tfds_name}", "license": data.default_license or "unknown",
            "attribution": data.default_attribution}


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def iter_documents(data: DataConfig, workdir: str, split: str) -> Iterator[dict]:
    """Documents of a `tfds` or `webdataset` source (bad samples skipped, counted in the log)."""
    if data.source == "tfds":
        tfds_split = data.tfds_splits[SPLITS.index(split)]
        dataset = builder(data, workdir).as_dataset(
            split=tfds_split, read_config=tfds.ReadConfig(add_tfds_id=True))
        for index, example in enumerate(tfds.as_numpy(dataset)):
            yield tfds_document(data, example, index, split)
        return
    report = folder_source.SkipReport()
    defaults = {"source": data.default_source, "license": data.default_license,
                "attribution": data.default_attribution}
    for path in webdataset.shard_paths(data.webdataset):
        for item in webdataset.read_shard(path, data.image_size, split, data.validation_fraction,
                                          data.test_fraction, defaults):
            if isinstance(item, images.BadImage):
                report.add(item.reason, item.path)
            else:
                yield item
    report.log(f"webdataset {data.webdataset} ({split})")


def _generated(data: DataConfig, workdir: str, split: str) -> tf.data.Dataset:
    size = data.image_size
    signature = {"id": tf.TensorSpec((), tf.string), "caption": tf.TensorSpec((), tf.string),
                 "image": tf.TensorSpec((size, size, 3), tf.uint8),
                 "source": tf.TensorSpec((), tf.string), "license": tf.TensorSpec((), tf.string),
                 "attribution": tf.TensorSpec((), tf.string)}
    return tf.data.Dataset.from_generator(lambda: iter_documents(data, workdir, split),
                                          output_signature=signature)


def split_size(data: DataConfig, workdir: str, split: str) -> int:
    """Examples in a split of the project's builders (`shapes`, `folder`); 0 for a split a small
    folder left empty (tfds then has no such split at all)."""
    splits = prepared_builder(data, workdir).info.splits
    return int(splits[split].num_examples) if split in splits else 0


def known_split_size(data: DataConfig, workdir: str, split: str) -> int | None:
    """The split's document count where its builder knows it (the project's builders, a built tfds
    data set), else None (WebDataset shards are not counted ahead)."""
    if data.source in ("shapes", "folder"):
        return split_size(data, workdir, split)
    if data.source == "tfds":
        try:
            tfds_split = data.tfds_splits[SPLITS.index(split)]
            return int(builder(data, workdir).info.splits[tfds_split].num_examples)
        except Exception:  # noqa: BLE001 - a count is only for progress lines and choices
            return None
    return None


def load(data: DataConfig, workdir: str, split: str, shuffle_files: bool = False) -> tf.data.Dataset:
    """A split as a tf.data.Dataset of feature dicts (see the builders for the features)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if data.source in ("tfds", "webdataset"):
        return _generated(data, workdir, split)
    ready = prepared_builder(data, workdir)
    if split not in ready.info.splits or ready.info.splits[split].num_examples == 0:
        raise ValueError(f"the {split} split of {ready.info.full_name} is empty "
                         f"(data.source={data.source!r}); add data or change the split fractions")
    return ready.as_dataset(split=split, shuffle_files=shuffle_files)


def numpy_examples(data: DataConfig, workdir: str, split: str, limit: int | None = None
                   ) -> Iterator[dict]:
    """Examples as numpy dicts (strings as Python str) for small-scale, non-training use."""
    dataset = load(data, workdir, split)
    if limit is not None:
        dataset = dataset.take(limit)
    for example in tfds.as_numpy(dataset):
        yield _decode_strings(example)


def _decode_strings(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: _decode_strings(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_decode_strings(v) for v in value.tolist()]
    return value


def text_corpus(data: DataConfig, workdir: str, split: str = "train") -> Iterator[str]:
    """Every piece of text the model will read: captions, questions, answers, edit instructions."""
    for example in numpy_examples(data, workdir, split):
        yield example["caption"]
        questions = example.get("questions")
        if questions:
            yield from questions["question"]
            yield from questions["answer"]
        edit = example.get("edit")
        if edit:
            yield edit["instruction"]
