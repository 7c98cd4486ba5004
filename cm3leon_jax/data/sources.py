"""Documents by name: the one place that turns `config.data` into a tfds builder and a tf.data split.

Every later stage (tokenizers, retrieval, preparation, evaluation) reads documents through `load`,
so adding a source (tfds-by-name, WebDataset shards) means adding it here only.
"""

from __future__ import annotations

from typing import Iterator

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cm3leon_jax.config import DataConfig
from cm3leon_jax.data import folder as folder_source
from cm3leon_jax.data.shapes import builder as shapes_builder

SPLITS = ("train", "validation", "test")

tfds.disable_progress_bar()  # our own Progress lines and logs say what is happening


def data_dir(data: DataConfig, workdir: str) -> str:
    return data.data_dir or str(epath.Path(workdir) / "tfds")


def builder(data: DataConfig, workdir: str) -> tfds.core.DatasetBuilder:
    """The tfds builder for `data` (not yet built)."""
    if data.source == "shapes":
        config = shapes_builder.ShapesConfig.named(
            image_size=data.image_size, num_train=data.num_train,
            num_validation=data.num_validation, num_test=data.num_test, seed=data.seed,
            max_objects=data.max_objects, textured_fraction=data.textured_fraction)
        return shapes_builder.Shapes(config=config, data_dir=data_dir(data, workdir))
    config = folder_source.FolderConfig.for_folder(
        folder=data.folder, image_size=data.image_size,
        validation_fraction=data.validation_fraction, test_fraction=data.test_fraction,
        default_license=data.default_license, default_source=data.default_source,
        default_attribution=data.default_attribution)
    return folder_source.Folder(config=config, data_dir=data_dir(data, workdir))


def prepared_builder(data: DataConfig, workdir: str) -> tfds.core.DatasetBuilder:
    """The builder, built on first use (offline: every source is generated or local)."""
    result = builder(data, workdir)
    result.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return result


def load(data: DataConfig, workdir: str, split: str, shuffle_files: bool = False) -> tf.data.Dataset:
    """A split as a tf.data.Dataset of feature dicts (see the builders for the features)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
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
