"""Trains the VQ-GAN image tokenizer, evaluates it on the test split and exports it.

    python -m cm3leon_jax.tokenizers.train_vqgan --config experiments/vqgan_shapes.py --workdir W

Sections, in order: config -> mesh -> data -> model and optimizers -> train step -> warm start ->
loop -> evaluation and export. Data parallel: the batch is sharded over a 1-D `data` mesh axis of
every device (= the local devices in a single-process run; each process feeds its own share),
parameters and optimizer state are replicated, and the step is `jax.jit` with explicit shardings.

Writes into W: `checkpoints/` (Orbax, `train/run_control.py`: a rerun resumes from the latest;
SIGTERM saves and exits 0), TensorBoard events (losses, PSNR, codebook usage and perplexity,
reconstruction grids), `image_tokenizer/` (the export that `ImageTokenizer.load` reads),
`reconstructions.png` (test images over their reconstructions) and `metrics.json` (stage `vqgan`:
test PSNR, codebook usage and perplexity, verifier exact-match rate of reconstructions).
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorflow as tf

from cm3leon_jax import cli, image_metrics, paths, results
from cm3leon_jax import config as config_lib
from cm3leon_jax.config import ConfigError, DataConfig, VQGANConfig, VQGANTrainConfig
from cm3leon_jax.data.sources import catalog
from cm3leon_jax.data.sources.shapes import builder, verifier
from cm3leon_jax.evaluation import attributes
from cm3leon_jax.tokenizers import grids, image_tokenizer, losses, quantizer
from cm3leon_jax.tokenizers.discriminator import PatchDiscriminator
from cm3leon_jax.tokenizers.image_tokenizer import EXPORT_DIR, ImageTokenizer
from cm3leon_jax.tokenizers.vqgan import VQGAN, init_key, output_conv
from cm3leon_jax.train.optimizer import warmup_cosine
from cm3leon_jax.train.run_control import RunControl

STAGE = "vqgan"
GRID_IMAGES = 16

# ==================================================================================== config ==


def read_config(cfg: ml_collections.ConfigDict) -> tuple[DataConfig, VQGANConfig, VQGANTrainConfig]:
    data = config_lib.data_config(cfg)
    model = config_lib.section(cfg, "vqgan", VQGANConfig)
    train = config_lib.section(cfg, "vqgan_train", VQGANTrainConfig)
    if model.image_size != data.image_size:
        raise ConfigError(f"config.vqgan.image_size={model.image_size!r}: must equal "
                          f"config.data.image_size={data.image_size} (the images it will read)")
    if train.crop_size and (train.crop_size > model.image_size
                            or train.crop_size % model.downsample_factor):
        raise ConfigError(f"config.vqgan_train.crop_size={train.crop_size!r}: must be at most "
                          f"config.vqgan.image_size={model.image_size} and a multiple of "
                          f"config.vqgan.downsample_factor={model.downsample_factor} (or 0)")
    if train.crop_size and model.discriminator_weight > 0 and \
            train.crop_size // 2 ** model.discriminator_layers < 4:
        raise ConfigError(f"config.vqgan_train.crop_size={train.crop_size!r}: the discriminator "
                          f"sees the crops, and crop_size / 2**config.vqgan.discriminator_layers "
                          f"({model.discriminator_layers}) must be >= 4")
    devices = jax.device_count()
    if train.batch_size % devices:
        raise ConfigError(f"config.vqgan_train.batch_size={train.batch_size!r}: must be divisible "
                          f"by the number of devices ({devices}) for data parallelism")
    return data, model, train


# ====================================================================================== mesh ==


def make_mesh() -> Mesh:
    """A 1-D `data` mesh over every device (Auto axis types: jit's arguments give the shardings)."""
    return Mesh(np.asarray(jax.devices()), ("data",))


# ====================================================================================== data ==


def train_images(data: DataConfig, workdir: str, local_batch: int, seed: int,
                 shuffle_buffer: int, crop_size: int = 0) -> Iterator[np.ndarray]:
    """Endless uint8 batches [local_batch, S, S, 3] of this process's share of the train split.

    Edit targets (shapes' `edit.image`) are images the tokenizer must also encode later, so they
    are trained on too. The shuffle is seeded; a resumed run passes a seed that includes the step,
    so its order is deterministic but not a replay of the interrupted run. With `crop_size`, each
    image is a random S = crop_size crop, drawn anew every epoch from the same seeded stream.
    """
    dataset = catalog.load(data, workdir, "train", shuffle_files=False)
    dataset = dataset.shard(jax.process_count(), jax.process_index())

    def images(example):
        stack = [example["image"]]
        if "edit" in example and "image" in example["edit"]:
            stack.append(example["edit"]["image"])
        return tf.data.Dataset.from_tensor_slices(tf.stack(stack))

    dataset = dataset.flat_map(images).cache()
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    if crop_size:
        # Each process draws its own crop windows (the shuffle seed is shared by all of them).
        crop_seeds = tf.data.Dataset.random(seed=seed * 7919 + jax.process_index()).batch(2)
        dataset = tf.data.Dataset.zip(dataset, crop_seeds).map(
            lambda image, crop_seed: tf.image.stateless_random_crop(
                image, (crop_size, crop_size, 3), seed=crop_seed),
            num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(local_batch, drop_remainder=True).prefetch(2)
    return dataset.as_numpy_iterator()


def split_examples(data: DataConfig, workdir: str, split: str, limit: int | None = None
                   ) -> tuple[np.ndarray, list | None]:
    """(uint8 images [N, S, S, 3], object keys per image or None when the source has none)."""
    images, objects = [], []
    for example in catalog.numpy_examples(data, workdir, split, limit=limit):
        images.append(example["image"])
        objects.append(builder.decode_objects(example["objects"]) if "objects" in example
                       else None)
    has_objects = bool(objects) and all(o is not None for o in objects)
    return np.stack(images), (objects if has_objects else None)


# ==================================================================== model and optimizers ==


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of steps taken
    params: Any  # VQ-GAN parameters (codebook included for codebook_update='loss')
    vq_state: Any  # quantizer collection: usage counters (+ EMA codebook and statistics)
    opt_state: Any
    disc_params: Any
    disc_opt_state: Any


def learning_rate_schedule(train: VQGANTrainConfig) -> optax.Schedule:
    return warmup_cosine(train.learning_rate, train.warmup_steps, train.num_steps,
                         train.final_learning_rate_fraction)


def make_optimizers(train: VQGANTrainConfig) -> tuple[optax.GradientTransformation,
                                                      optax.GradientTransformation]:
    """Adam for the VQ-GAN (warmup + cosine schedule) and for the discriminator (constant)."""
    schedule = learning_rate_schedule(train)
    clip = [optax.clip_by_global_norm(train.grad_clip_norm)] if train.grad_clip_norm else []
    generator = optax.chain(*clip, optax.adam(schedule, b1=train.adam_b1, b2=train.adam_b2))
    discriminator = optax.chain(*clip, optax.adam(train.discriminator_learning_rate,
                                                  b1=train.adam_b1, b2=train.adam_b2))
    return generator, discriminator


def init_state(model: VQGAN, discriminator: PatchDiscriminator, generator_tx, discriminator_tx,
               image_size: int, seed: int, sharding: NamedSharding | None = None) -> TrainState:
    """Fresh parameters and optimizer states, built by one jit-compiled function (initialising
    op by op would dispatch hundreds of tiny computations) and placed with `sharding`."""

    def build() -> TrainState:
        model_rng, disc_rng = jax.random.split(init_key(seed))
        dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        variables = model.init({"params": model_rng}, dummy)
        params = variables["params"]
        disc_params = discriminator.init(disc_rng, dummy)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          vq_state=variables.get(quantizer.STATE, {}),
                          opt_state=generator_tx.init(params), disc_params=disc_params,
                          disc_opt_state=discriminator_tx.init(disc_params))

    return jax.jit(build, out_shardings=sharding)()


# ================================================================================ train step ==


def last_layer_gradient(params: Any, features: jax.Array, image_gradient: jax.Array) -> jax.Array:
    """d loss / d (decoder conv_out kernel), given d loss / d image and the conv's input features.

    The image is linear in that kernel, so one VJP of the conv alone gives what taming gets from
    autograd through the whole network.
    """
    last = jax.lax.stop_gradient(params["decoder"]["conv_out"])
    _, pull_back = jax.vjp(lambda kernel: output_conv().apply(
        {"params": {"kernel": kernel, "bias": last["bias"]}}, jax.lax.stop_gradient(features)),
        last["kernel"])
    return pull_back(image_gradient)[0]


def adaptive_gan_weight(params: Any, features: jax.Array, rec_image_grad: jax.Array,
                        gan_image_grad: jax.Array, maximum: float) -> jax.Array:
    """taming's adaptive weight from the two losses' gradients with respect to the image."""
    return losses.adaptive_weight(last_layer_gradient(params, features, rec_image_grad),
                                  last_layer_gradient(params, features, gan_image_grad), maximum)


def make_train_step(model: VQGAN, discriminator: PatchDiscriminator, generator_tx,
                    discriminator_tx, cfg: VQGANConfig, seed: int, use_gan: bool):
    """The step function (state, uint8 images) -> (state, scalar metrics); `use_gan` is static.

    Two compiled variants exist: before `discriminator_start` the PatchGAN is not run at all.
    """
    base_rng = init_key(seed + 1)

    def disc_logits(disc_params, images):
        return discriminator.apply({"params": disc_params}, images)

    def generator_loss(params, state: TrainState, images):
        (reconstructions, quantized, features), mutated = model.apply(
            {"params": params, quantizer.STATE: state.vq_state}, images, train=True,
            mutable=[quantizer.STATE])
        rec_loss = losses.reconstruction_loss(reconstructions, images, cfg.reconstruction_loss,
                                              cfg.edge_weight)
        total = rec_loss + quantized.loss
        metrics = {"loss/reconstruction": rec_loss, "loss/quantizer": quantized.loss}
        if use_gan:
            fixed = jax.lax.stop_gradient(reconstructions)
            fake_logits, pull_to_image = jax.vjp(lambda x: disc_logits(state.disc_params, x),
                                                 fixed)
            gan_loss = losses.generator_adversarial_loss(fake_logits)
            # d gan_loss / d image, from one discriminator backward pass.
            gan_image_grad = pull_to_image(jnp.full_like(fake_logits, -1.0 / fake_logits.size))[0]
            rec_image_grad = jax.grad(lambda x: losses.reconstruction_loss(
                x, images, cfg.reconstruction_loss, cfg.edge_weight))(fixed)
            weight = cfg.discriminator_weight * adaptive_gan_weight(
                params, features, rec_image_grad, gan_image_grad, cfg.adaptive_weight_max)
            # <sg(dL_gan/dx), x> has exactly gan_loss's gradient wrt the generator's parameters.
            total = total + weight * jnp.sum(jax.lax.stop_gradient(gan_image_grad)
                                             * reconstructions)
            metrics.update({"loss/generator_gan": gan_loss, "gan/adaptive_weight": weight})
        metrics["loss/total"] = (rec_loss + quantized.loss
                                 + (metrics["gan/adaptive_weight"] * metrics["loss/generator_gan"]
                                    if use_gan else 0.0))
        return total, (metrics, mutated[quantizer.STATE], reconstructions, quantized)

    def train_step(state: TrainState, images_uint8: jax.Array) -> tuple[TrainState, dict]:
        images = losses.to_model_range(images_uint8)
        grads, (metrics, vq_state, reconstructions, quantized) = jax.grad(
            generator_loss, has_aux=True)(state.params, state, images)
        updates, opt_state = generator_tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        restarted = jnp.zeros((), jnp.int32)
        if cfg.restart_unused_after:
            rng = jax.random.fold_in(base_rng, state.step)
            quantizer_params, quantizer_state, restarted = quantizer.restart_dead_codes(
                params.get("quantizer", {}), vq_state["quantizer"], cfg.codebook_update,
                cfg.codebook_lookup == "cosine", quantized.encoder_vectors, rng,
                cfg.restart_unused_after,
                quantized.errors if cfg.restart_sampling == "error" else None)
            if "quantizer" in params:
                params = {**params, "quantizer": quantizer_params}
            vq_state = {**vq_state, "quantizer": quantizer_state}

        disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
        if use_gan:
            fakes = jax.lax.stop_gradient(reconstructions)

            def disc_loss_fn(disc_params_):
                logits = disc_logits(disc_params_, jnp.concatenate([images, fakes]))
                real, fake = jnp.split(logits, 2)
                return losses.discriminator_hinge_loss(real, fake), (jnp.mean(real),
                                                                     jnp.mean(fake))

            (disc_loss, (real_mean, fake_mean)), disc_grads = jax.value_and_grad(
                disc_loss_fn, has_aux=True)(disc_params)
            disc_updates, disc_opt_state = discriminator_tx.update(disc_grads, disc_opt_state,
                                                                   disc_params)
            disc_params = optax.apply_updates(disc_params, disc_updates)
            metrics.update({"loss/discriminator": disc_loss, "gan/logits_real": real_mean,
                            "gan/logits_fake": fake_mean})

        counts = quantized.code_counts
        metrics.update({
            "psnr": jnp.mean(losses.psnr(losses.to_uint8(reconstructions), images_uint8)),
            "codebook/perplexity": quantizer.perplexity(counts),
            "codebook/batch_usage": jnp.mean(counts > 0),
            "codebook/restarted": restarted,
            "grad_norm": optax.global_norm(grads),
        })
        new_state = TrainState(step=state.step + 1, params=params, vq_state=vq_state,
                               opt_state=opt_state, disc_params=disc_params,
                               disc_opt_state=disc_opt_state)
        return new_state, metrics

    return train_step


def compile_step(step_fn, mesh: Mesh):
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))
    return jax.jit(step_fn, in_shardings=(replicated, batch), out_shardings=(replicated,
                                                                             replicated),
                   donate_argnums=(0,))


def global_batch(local_images: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows -> one jax.Array sharded over `data`."""
    sharding = NamedSharding(mesh, P("data"))
    return jax.make_array_from_process_local_data(sharding, local_images)


# ================================================================================ warm start ==


# What must match between a warm-start source and the model it starts (image_size need not).
ARCHITECTURE_FIELDS = ("downsample_factor", "channels", "channel_multipliers", "num_res_blocks",
                       "attention_resolutions", "mid_attention", "encoder_context", "norm_groups",
                       "codebook_size", "code_dim", "codebook_lookup", "codebook_update")


def warm_start(state: TrainState, init_from: str, model_cfg: VQGANConfig,
               sharding: NamedSharding) -> TrainState:
    """`state` with the weights and codebook of the tokenizer export at `init_from`.

    The optimizer state stays fresh. The source may differ from `model_cfg` in image_size only
    (no parameter depends on it); a difference in any field that shapes or places a parameter
    (ARCHITECTURE_FIELDS) is refused by name.
    """
    field = f"config.vqgan_train.init_from={init_from!r}"
    try:
        source_cfg = image_tokenizer.read_config(init_from)
    except FileNotFoundError as error:
        raise ConfigError(f"{field}: {error}") from None
    differing = [f"{name} {getattr(source_cfg, name)!r} there, {getattr(model_cfg, name)!r} here"
                 for name in ARCHITECTURE_FIELDS
                 if getattr(source_cfg, name) != getattr(model_cfg, name)]
    if differing:
        raise ConfigError(f"{field}: its VQ-GAN has another architecture than config.vqgan "
                          f"({'; '.join(differing)})")
    source = ImageTokenizer.load(init_from).variables
    logging.info("initialised from the tokenizer at %s", init_from)
    placed = jax.device_put(jax.tree.map(jnp.asarray, dict(source)), sharding)
    return state.replace(params=placed["params"],
                         vq_state=placed.get(quantizer.STATE, state.vq_state))


# ====================================================================================== loop ==


def variables_of(state: TrainState) -> dict[str, Any]:
    """What the tokenizer needs at inference: parameters and the quantizer collection."""
    variables = {"params": state.params}
    if state.vq_state:
        variables[quantizer.STATE] = state.vq_state
    return variables


def mean_metrics(history: list[dict]) -> dict[str, float]:
    """Per-name means; a window where the GAN turns on mixes steps with and without GAN metrics."""
    names = sorted({name for metrics in history for name in metrics})
    return {name: float(np.mean([m[name] for m in history if name in m])) for name in names}


def train(cfg: ml_collections.ConfigDict, workdir: str, data_workdir: str | None = None
          ) -> tuple[TrainState, float]:
    """Trains to `vqgan_train.num_steps` (resuming if possible); returns (state, train seconds).

    `data_workdir` is where the data set is built (default: `workdir`), so a caller with its own
    workdir layout (the demo) builds the data once. On SIGTERM it saves and raises
    `run_control.TrainingStopped` (exit status 0); a NaN / inf loss raises `NonFiniteError`.
    """
    data_cfg, model_cfg, train_cfg = read_config(cfg)
    data_workdir = data_workdir or workdir
    mesh = make_mesh()
    model = VQGAN(model_cfg)
    discriminator = PatchDiscriminator(model_cfg.discriminator_channels,
                                       model_cfg.discriminator_layers)
    generator_tx, discriminator_tx = make_optimizers(train_cfg)

    state = init_state(model, discriminator, generator_tx, discriminator_tx,
                       model_cfg.image_size, train_cfg.seed, NamedSharding(mesh, P()))
    # SIGTERM saves and stops (exit 0); a non-finite loss stops naming the step (run_control).
    with RunControl(STAGE, paths.checkpoints_of(workdir), train_cfg.keep_checkpoints,
                    watch=("loss/total", "loss/discriminator", "grad_norm"),
                    advice="lower config.vqgan_train.learning_rate") as run:
        found = run.restore_latest(ocp.args.StandardRestore(state))
        if found is not None:
            state = found[0]
        start_step = int(state.step)
        if train_cfg.init_from and start_step == 0:
            state = warm_start(state, train_cfg.init_from, model_cfg, NamedSharding(mesh, P()))

        is_chief = jax.process_index() == 0
        writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
        if start_step == 0:
            writer.write_hparams({**{f"vqgan.{k}": str(v) for k, v in vars(model_cfg).items()},
                                  **{f"vqgan_train.{k}": v for k, v in vars(train_cfg).items()}})
        if start_step >= train_cfg.num_steps:
            logging.info("checkpoint is at step %d >= num_steps: nothing to train", start_step)
            return state, 0.0

        local_batch = train_cfg.batch_size // jax.process_count()
        batches = train_images(data_cfg, data_workdir, local_batch,
                               train_cfg.seed * 1_000_003 + start_step, train_cfg.shuffle_buffer,
                               train_cfg.crop_size)
        # Validation images for the progress grid; a small folder may leave that split empty.
        grid_split = next((split for split in ("validation", "test", "train")
                           if catalog.known_split_size(data_cfg, data_workdir, split) != 0),
                          "train")
        grid_images, _ = split_examples(data_cfg, data_workdir, grid_split, limit=GRID_IMAGES)
        steps = {use_gan: compile_step(make_train_step(
            model, discriminator, generator_tx, discriminator_tx, model_cfg, train_cfg.seed,
            use_gan), mesh) for use_gan in {False, model_cfg.discriminator_weight > 0}}
        reconstruct = jax.jit(lambda variables, images: losses.to_uint8(
            model.apply(variables, losses.to_model_range(images))[0]))

        report = periodic_actions.ReportProgress(num_train_steps=train_cfg.num_steps,
                                                 writer=writer, every_secs=60.0)
        start_time = time.perf_counter()
        for step in range(start_step + 1, train_cfg.num_steps + 1):
            use_gan = model_cfg.discriminator_weight > 0 and step > model_cfg.discriminator_start
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = steps[use_gan](state, global_batch(next(batches), mesh))
            run.record(step, metrics)
            report(step)
            is_last = step == train_cfg.num_steps
            stopping = run.stop_requested()
            if step % train_cfg.log_every == 0 or is_last or stopping:
                averaged = mean_metrics([values for _, values in run.take()])
                averaged["learning_rate"] = float(learning_rate_schedule(train_cfg)(step))
                writer.write_scalars(step, averaged)
            if step % train_cfg.image_every == 0 or is_last:
                rebuilt = np.asarray(reconstruct(variables_of(state), grid_images))
                writer.write_images(step, {"reconstructions": grids.comparison_grid(
                    grid_images, rebuilt, columns=8, scale=4)[None]})
                writer.write_scalars(step, {"validation/psnr": float(np.mean(
                    losses.psnr(rebuilt, grid_images)))})
            if step % train_cfg.checkpoint_every == 0 or is_last or stopping:
                run.save(step, ocp.args.StandardSave(state))
            if stopping:
                writer.flush()
                run.stop(step)
    writer.flush()
    return state, time.perf_counter() - start_time


# ===================================================================== evaluation and export ==


def evaluate(tokenizer: ImageTokenizer, images: np.ndarray, objects: list | None,
             source: str = "shapes") -> tuple[dict, np.ndarray]:
    """Test-split figures of decode(encode(images)): PSNR, SSIM, codebook usage/perplexity, and
    the verifier on `shapes` (objects; other data says why it has no verifier figure)."""
    codes = tokenizer.encode(images)
    reconstructions = tokenizer.decode(codes)
    counts = np.bincount(codes.ravel(), minlength=tokenizer.codebook_size).astype(np.float32)
    figures = {
        "num_images": int(images.shape[0]),
        "psnr_db": float(np.mean(losses.psnr(reconstructions, images))),
        "ssim": float(np.mean(image_metrics.ssim(reconstructions, images))),
        "codebook_usage": float(np.mean(counts > 0)),
        "codebook_perplexity": float(quantizer.perplexity(jnp.asarray(counts))),
        "codebook_size": tokenizer.codebook_size,
        "code_grid": list(tokenizer.code_shape),
    }
    if objects is not None:
        matched = [verifier.matches(image, keys) for image, keys in zip(reconstructions, objects)]
        originals_ok = [verifier.matches(image, keys) for image, keys in zip(images, objects)]
        figures["verifier_exact_match"] = float(np.mean(matched))
        figures["verifier_exact_match_originals"] = float(np.mean(originals_ok))
    else:
        figures["verifier"] = attributes.no_verifier(source)
    return figures, reconstructions


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str,
                       data_workdir: str | None = None
                       ) -> tuple[dict, ImageTokenizer, np.ndarray, np.ndarray]:
    """Train, export to <workdir>/image_tokenizer, evaluate on the test split.

    Returns (figures, tokenizer, test images, their reconstructions).
    """
    data_cfg, model_cfg, train_cfg = read_config(cfg)
    data_workdir = data_workdir or workdir
    wall_start = time.perf_counter()
    state, train_seconds = train(cfg, workdir, data_workdir)
    tokenizer = ImageTokenizer(model_cfg, jax.device_get(variables_of(state)),
                               batch_size=train_cfg.eval_batch_size)
    if jax.process_index() == 0:
        tokenizer.save(epath.Path(workdir) / EXPORT_DIR)
    images, objects = split_examples(data_cfg, data_workdir, "test")
    figures, reconstructions = evaluate(tokenizer, images, objects, data_cfg.source)
    figures.update({"steps": int(state.step), "train_seconds": round(train_seconds, 1),
                    "wall_seconds": round(time.perf_counter() - wall_start, 1),
                    "devices": jax.device_count()})
    logging.info("vqgan test figures: %s", figures)
    return figures, tokenizer, images, reconstructions


def main(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """The entry point: train_and_evaluate, then reconstructions.png and metrics.json."""
    figures, _, images, reconstructions = train_and_evaluate(cfg, workdir)
    if jax.process_index() == 0:
        grids.save_png(epath.Path(workdir) / "reconstructions.png", grids.comparison_grid(
            images[:GRID_IMAGES], reconstructions[:GRID_IMAGES], columns=8, scale=4))
        results.write_metrics(workdir, STAGE, figures)
    return figures


if __name__ == "__main__":
    cli.run(main)
