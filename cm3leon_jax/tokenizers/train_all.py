"""Trains both tokenizers and builds the unified vocabulary: the tokenizer stage of the demo.

    from cm3leon_jax.tokenizers import train_all
    artefacts = train_all.train_tokenizers(cfg, workdir)
    vocab = Vocabulary.load(artefacts.vocab_dir)

or `python -m cm3leon_jax.tokenizers.train_all --config experiments/vqgan_tiny.py --workdir W`.
`cfg` needs the sections `data`, `vqgan`, `vqgan_train`, `text_tokenizer` and optionally `vocab`
(`experiments/vqgan_tiny.py` has all of them at the minutes-scale setting: ~3.5 min on 2 cores).

Layout written under <workdir>/tokenizers/: `vqgan/` (the train_vqgan workdir: checkpoints,
events, `image_tokenizer/` export), `reconstructions.png` (test images over their
reconstructions), `vocab/` (vocab.json + text.model; points at the VQ-GAN export). The data set is
built (once) in <workdir>, and the figures go to <workdir>/metrics.json under stages `vqgan` and
`text_tokenizer`.
"""

from __future__ import annotations

import dataclasses
import time

import ml_collections
import numpy as np

from cm3leon_jax import cli, paths, results
from cm3leon_jax import config as config_lib
from cm3leon_jax.config import TextTokenizerConfig, VocabConfig
from cm3leon_jax.tokenizers import grids, train_vqgan
from cm3leon_jax.tokenizers.image_tokenizer import EXPORT_DIR
from cm3leon_jax.tokenizers.text import TextTokenizer
from cm3leon_jax.vocab import Vocabulary


@dataclasses.dataclass(frozen=True)
class TokenizerArtefacts:
    vocab_dir: str  # Vocabulary.load(vocab_dir)
    image_tokenizer_dir: str  # ImageTokenizer.load(image_tokenizer_dir)
    text_model: str  # TextTokenizer.load(text_model)
    reconstructions_png: str
    figures: dict  # {"vqgan": {...}, "text_tokenizer": {...}}


def train_text_tokenizer(cfg: ml_collections.ConfigDict, workdir: str) -> TextTokenizer:
    """sentencepiece on `text_tokenizer.corpus` (a file) or on the data's train-split text."""
    text_cfg = config_lib.section(cfg, "text_tokenizer", TextTokenizerConfig)
    if text_cfg.corpus:
        return TextTokenizer.train_from_file(text_cfg.corpus, text_cfg)
    from cm3leon_jax.data.sources import catalog  # noqa: PLC0415

    return TextTokenizer.train(catalog.text_corpus(config_lib.data_config(cfg), workdir, "train"),
                               text_cfg)


def text_figures(cfg: ml_collections.ConfigDict, workdir: str, vocab: Vocabulary) -> dict:
    """Pieces, mean tokens per test-split sentence and its exact round-trip rate."""
    from cm3leon_jax.data.sources import catalog  # noqa: PLC0415

    sentences = list(catalog.text_corpus(config_lib.data_config(cfg), workdir, "test"))
    lengths = [len(vocab.encode_text(s)) for s in sentences]
    exact = [vocab.decode_text(vocab.encode_text(s)) == s for s in sentences]
    return {"text_pieces": vocab.text_size, "vocab_size": vocab.vocab_size,
            "vocab_used_ids": vocab.used_size, "test_sentences": len(sentences),
            "mean_tokens_per_sentence": float(np.mean(lengths)) if lengths else 0.0,
            "round_trip_exact": float(np.mean(exact)) if exact else 1.0}


def train_tokenizers(cfg: ml_collections.ConfigDict, workdir: str) -> TokenizerArtefacts:
    """Trains the VQ-GAN and the text tokenizer, saves the vocabulary, writes the PNG grid."""
    start = time.perf_counter()
    work = paths.Workdir(workdir)
    vqgan_dir = work.vqgan_run
    vqgan_figures, _, images, reconstructions = train_vqgan.train_and_evaluate(
        cfg, str(vqgan_dir), data_workdir=workdir)
    png = grids.save_png(work.reconstructions, grids.comparison_grid(
        images[:train_vqgan.GRID_IMAGES], reconstructions[:train_vqgan.GRID_IMAGES], columns=8,
        scale=4))

    text = train_text_tokenizer(cfg, workdir)
    vocab_cfg = (config_lib.section(cfg, "vocab", VocabConfig) if "vocab" in cfg
                 else VocabConfig())
    vocab = Vocabulary.build(text, str(vqgan_dir / EXPORT_DIR), vocab_cfg)
    vocab_dir = vocab.save(work.vocab())

    text_stats = text_figures(cfg, workdir, vocab)
    text_stats["seconds_total_tokenizers"] = round(time.perf_counter() - start, 1)
    results.write_metrics(workdir, train_vqgan.STAGE, vqgan_figures)
    results.write_metrics(workdir, "text_tokenizer", text_stats)
    return TokenizerArtefacts(
        vocab_dir=str(vocab_dir), image_tokenizer_dir=str(vqgan_dir / EXPORT_DIR),
        text_model=str(vocab_dir / "text.model"), reconstructions_png=str(png),
        figures={"vqgan": vqgan_figures, "text_tokenizer": text_stats})


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    train_tokenizers(cfg, workdir)


if __name__ == "__main__":
    cli.run(main)
