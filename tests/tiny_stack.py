"""Tiny, untrained tokenizers for tests that need a vocabulary but not a good one (seconds)."""

import jax
import jax.numpy as jnp

from cm3leon_jax.config import TextTokenizerConfig, VocabConfig, VQGANConfig
from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer
from cm3leon_jax.tokenizers.text import TextTokenizer
from cm3leon_jax.tokenizers.vqgan import VQGAN
from cm3leon_jax.vocab import Vocabulary

CORPUS = ["a small red circle at the top left", "make the square blue", "how many objects?",
          "there is a large green cross on the right", "what colour is the triangle?"] * 40


def random_image_tokenizer(path, image_size=32, codebook_size=64):
    config = VQGANConfig(image_size=image_size, downsample_factor=4, channels=16,
                         channel_multipliers=(1, 2, 2), norm_groups=8, codebook_size=codebook_size,
                         code_dim=8, mid_attention=False)
    variables = VQGAN(config).init(jax.random.key(0),
                                   jnp.zeros((1, image_size, image_size, 3)))
    return ImageTokenizer(config, variables, batch_size=8).save(path)


def write_vocab(directory, image_size=32, corpus=CORPUS):
    directory.mkdir(parents=True, exist_ok=True)
    image_path = random_image_tokenizer(directory / "vqgan", image_size)
    text = TextTokenizer.train(iter(corpus), TextTokenizerConfig(vocab_size=320))
    vocab = Vocabulary.build(text, str(image_path), VocabConfig(num_mask_sentinels=16))
    vocab.save(directory)
    return vocab
