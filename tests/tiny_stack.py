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


def fast_random_image_tokenizer(path, image_size=32, codebook_size=64, seed=0):
    """A random VQ-GAN export whose variables are drawn in numpy from their shapes
    (`jax.eval_shape`): compiling the VQ-GAN's `init` costs ~15 s on CPU."""
    import numpy as np  # noqa: PLC0415

    config = VQGANConfig(image_size=image_size, downsample_factor=4, channels=16,
                         channel_multipliers=(1, 2, 2), norm_groups=8,
                         codebook_size=codebook_size, code_dim=8, mid_attention=False)
    shapes = jax.eval_shape(VQGAN(config).init, jax.random.key(0),
                            jnp.zeros((1, image_size, image_size, 3)))
    rng = np.random.default_rng(seed)

    def draw(key_path, leaf):
        name = jax.tree_util.keystr(key_path)
        if "params" not in name or name.endswith("['bias']"):
            return np.zeros(leaf.shape, leaf.dtype)
        if name.endswith("['scale']"):
            return np.ones(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    return ImageTokenizer(config, variables, batch_size=8).save(path)


def fast_random_vocab(directory, image_size=32, codebook_size=64):
    """`write_vocab`'s vocabulary with `fast_random_image_tokenizer`'s VQ-GAN."""
    directory.mkdir(parents=True, exist_ok=True)
    image_path = fast_random_image_tokenizer(directory / "vqgan", image_size, codebook_size)
    text = TextTokenizer.train(iter(CORPUS), TextTokenizerConfig(vocab_size=320))
    vocab = Vocabulary.build(text, str(image_path), VocabConfig(num_mask_sentinels=16))
    vocab.save(directory)
    return vocab


def random_model_project(root, model=None, data=None, stages=("pretrain", "sft"), step=5):
    """A workdir with a vocabulary (random VQ-GAN), a manifest naming it and random decoder
    checkpoints for `stages`, each saving a config with `model` (and `data`) sections: what
    generation and evaluation load, in seconds, without training anything."""
    import json  # noqa: PLC0415

    import ml_collections  # noqa: PLC0415

    from cm3leon_jax.config import ModelConfig, TrainConfig  # noqa: PLC0415
    from cm3leon_jax.models.decoder import init_params  # noqa: PLC0415
    from cm3leon_jax.train.checkpoint import Checkpoints  # noqa: PLC0415

    vocab = fast_random_vocab(root / "vocab")
    (root / "prepared").mkdir(parents=True, exist_ok=True)
    (root / "prepared" / "manifest.json").write_text(json.dumps({"vocab": str(root / "vocab")}))
    sections = {"model": {**dict(preset="cm3leon", vocab_size=vocab.vocab_size, num_layers=2,
                                 d_model=32, num_heads=2, max_seq_len=192,
                                 zero_init_output_projections=False), **(model or {})}}
    if data is not None:
        sections["data"] = dict(data)
    cfg = ml_collections.ConfigDict(sections)
    for seed, stage in enumerate(stages):
        params = init_params(ModelConfig(**cfg.model.to_dict()), jax.random.key(seed))
        checkpoints = Checkpoints(str(root / stage / "checkpoints"),
                                  TrainConfig(async_checkpoints=False))
        checkpoints.save(step, {"params": params, "step": step}, {}, {"config": cfg.to_dict()})
        checkpoints.close()
    return vocab
