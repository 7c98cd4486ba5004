"""The decoder as a training `Task`: what pretraining, instruction tuning and super-resolution share.

They differ only in their data (CM3-masked retrieval-augmented rows, instruction rows with the
prompt masked, low-res -> high-res code rows) and in their configs; the model, its sharding on the
mesh and the loss are built here once.

The loss reports text and image tokens separately (`text/loss`, `image/loss`, perplexities): an
image-token loss going down while the text loss stalls says something a single number hides.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm3leon_jax import paths
from cm3leon_jax import config as config_lib
from cm3leon_jax.models import accounting, backward, loss as loss_lib
from cm3leon_jax.models.decoder import Decoder
from cm3leon_jax.parallel import sharding
from cm3leon_jax.train import loop


def model_signature(model: config_lib.ModelConfig) -> dict:
    """What a checkpoint must agree on to be resumed by this config."""
    return {key: getattr(model, key) for key in ("preset", "vocab_size", "num_layers", "d_model",
                                                 "num_heads", "num_kv_heads", "max_seq_len",
                                                 "tie_embeddings")}


def make_loss_fn(model_cfg: config_lib.ModelConfig, image_range: tuple[int, int]):
    """loss_fn(params, batch, rng) -> (objective sum, metric sums), see `train/step.py`.

    batch: `ids` [batch, length] int32 and, optional (as the packer writes them,
    `data/input/packing.py`), `segment_ids` (0 = padding; default one document per row), `positions` (default: restart per
    segment) and `weights` (float32 weight of predicting `ids[t]`; default 1)."""
    model = Decoder(model_cfg)
    image_lo, image_hi = image_range
    log_z_and_target_logit = (loss_lib.log_z_and_target_logit
                              if backward.use_custom(model_cfg.backward, "loss", model_cfg.dtype)
                              else loss_lib.log_z_and_target_logit_autodiff)

    def loss_fn(params, batch, rng):
        del rng  # the decoder has no dropout (CM3leon: none)
        logits = model.apply({"params": params}, batch["ids"], batch.get("segment_ids"),
                             batch.get("positions"))
        targets, weights = loss_lib.next_token_targets(batch["ids"], batch.get("segment_ids"),
                                                       batch.get("weights"))
        log_z, target_logit = log_z_and_target_logit(logits.astype(jnp.float32), targets)
        nll = (log_z - target_logit) * weights
        z_term = model_cfg.z_loss * jnp.square(log_z) * weights
        is_image = ((targets >= image_lo) & (targets < image_hi)).astype(jnp.float32)
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
        sums = {"loss": nll.sum(), "tokens": weights.sum(),
                "text_loss": (nll * (1 - is_image)).sum(),
                "text_tokens": (weights * (1 - is_image)).sum(),
                "image_loss": (nll * is_image).sum(), "image_tokens": (weights * is_image).sum(),
                "accuracy": correct.sum(), "z_loss": z_term.sum()}
        return nll.sum() + z_term.sum(), sums

    return loss_fn


def boxed_params(model_cfg: config_lib.ModelConfig, rng: jax.Array):
    """Initial parameters carrying their logical axis names (`nn.LogicallyPartitioned`)."""
    return Decoder(model_cfg).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]


def init_params(model_cfg: config_lib.ModelConfig, rng: jax.Array):
    """Initial parameters, plain arrays (laid out by `param_shardings` when jitted with it)."""
    return nn.meta.unbox(boxed_params(model_cfg, rng))


def param_shardings(model_cfg: config_lib.ModelConfig, mesh: jax.sharding.Mesh,
                    rules: sharding.Rules):
    """NamedShardings of the parameters from their logical names and the rule table; ValueError
    naming the weight when a mesh axis does not divide one of its dimensions."""
    boxed = jax.eval_shape(functools.partial(boxed_params, model_cfg), jax.random.key(0))
    shardings = sharding.logical_shardings(sharding.logical_specs(boxed), mesh, rules)
    # Unboxed under eval_shape: outside a trace, unboxing applies the rules' constraint eagerly.
    sharding.check_divisible(jax.eval_shape(functools.partial(init_params, model_cfg),
                                            jax.random.key(0)), shardings)
    return shardings


def make_task(name: str, cfg, mesh: jax.sharding.Mesh, train_data: loop.DataIterator,
              eval_data: dict[str, Callable[[], Iterator[dict]]], image_range: tuple[int, int],
              data_fingerprint: str, seq_len: int,
              on_eval: Optional[Callable] = None, vocab_fingerprint: str = "") -> loop.Task:
    model_cfg = config_lib.model_config(cfg)
    mesh_cfg = config_lib.mesh_config(cfg)
    train_cfg = config_lib.train_config(cfg)
    rules = mesh_cfg.logical_axis_rules()
    sharding.sequences_per_shard(train_cfg.batch_size, dict(mesh.shape), rules)

    abstract = nn.meta.unbox(accounting.abstract_params(model_cfg))
    num_params = sum(x.size for x in jax.tree.leaves(abstract))
    flops = accounting.flops_per_token(model_cfg, num_params, accounting.lookup_only_params(
        model_cfg, abstract), seq_len=seq_len)["total"]
    return loop.Task(
        name=name, init_params=functools.partial(init_params, model_cfg),
        param_shardings=lambda abstract: param_shardings(model_cfg, mesh, rules),
        batch_sharding=sharding.batch_sharding(mesh, rules),
        loss_fn=make_loss_fn(model_cfg, image_range), train_data=train_data,
        eval_data=eval_data, tokens_per_batch=train_cfg.batch_size * seq_len,
        flops_per_token=flops, model_signature=model_signature(model_cfg),
        data_fingerprint=data_fingerprint, vocab_fingerprint=vocab_fingerprint, on_eval=on_eval,
        context=functools.partial(sharding.sharding_context, mesh, rules))


class Setup:
    """What every decoder stage reads from a project workdir: prepared data, vocabulary, mesh."""

    def __init__(self, cfg, workdir: str):
        from cm3leon_jax.data.input import pipeline
        from cm3leon_jax.parallel import mesh as mesh_lib  # noqa: PLC0415
        from cm3leon_jax.vocab import Vocabulary  # noqa: PLC0415

        self.model = config_lib.model_config(cfg)
        self.train = config_lib.train_config(cfg)
        self.cm3 = config_lib.cm3_config(cfg)
        if self.cm3.seq_len > self.model.max_seq_len:
            config_lib.fail("cm3.seq_len", self.cm3.seq_len,
                            f"exceeds config.model.max_seq_len={self.model.max_seq_len}")
        self.prepared = paths.Workdir(workdir).prepared
        manifest = pipeline.read_manifest(self.prepared)
        self.vocab = Vocabulary.load(manifest["vocab"])
        if self.model.vocab_size < self.vocab.vocab_size:
            config_lib.fail("model.vocab_size", self.model.vocab_size,
                            f"is smaller than the prepared data's vocabulary "
                            f"({self.vocab.vocab_size} ids, {manifest['vocab']})")
        self.prepared_splits = [s for s, v in manifest["splits"].items() if v["documents"]]
        self.fingerprint = pipeline.data_fingerprint(self.prepared)
        mesh_cfg = config_lib.mesh_config(cfg)
        self.mesh = mesh_lib.make_mesh(mesh_cfg)
        self.batch_sharding = sharding.batch_sharding(self.mesh, mesh_cfg.logical_axis_rules())
        self.image_range = (self.vocab.image_offset,
                            self.vocab.image_offset + self.vocab.codebook_size)
