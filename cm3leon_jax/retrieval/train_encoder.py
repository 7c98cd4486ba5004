"""Contrastive training of the retriever's bi-encoder on the data set's image-caption pairs.

    python -m cm3leon_jax.retrieval.train_encoder --config experiments/retrieval_shapes.py --workdir W

Symmetric InfoNCE as in CLIP: in a batch of B pairs, logits = exp(logit_scale) * t_i . v_j over the
L2-normalised text and image embeddings; the loss is the mean of the cross-entropies text->image and
image->text with the matching pair as the label. `logit_scale` (log of the inverse temperature)
is learned, starts at log(1/0.07) and is clipped to log(`retrieval.max_logit_scale`) after each step.

Writes `<encoder_dir>/architecture.json` and Orbax checkpoints under `<encoder_dir>/checkpoints`
(encoder_dir defaults to `W/retrieval_encoder`; a rerun resumes from the latest one, SIGTERM saves
and exits 0, a NaN loss stops naming the step: `cm3leon_jax/train/run_control.py`), CLU metrics
(TensorBoard + log) and, at the end, `W/metrics.json` stage "retrieval_encoder": zero-shot
recall@1/@5 text->image and image->text on the test split (each caption against every test image
and vice versa).
"""

from __future__ import annotations

import time

from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorflow as tf

from cm3leon_jax import cli, config, results
from cm3leon_jax.retrieval import corpus, encoder, recall
from cm3leon_jax.train.optimizer import warmup_cosine
from cm3leon_jax.train.run_control import RunControl

STAGE = "retrieval_encoder"


# --------------------------------------------------------------------------------------------------
# Loss and metrics
# --------------------------------------------------------------------------------------------------

def contrastive_loss(text_embeddings: jax.Array, image_embeddings: jax.Array,
                     logit_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(symmetric InfoNCE loss, top-1 accuracy of both directions) for aligned rows."""
    logits = logit_scale * text_embeddings @ image_embeddings.T
    labels = jnp.arange(logits.shape[0])
    text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    accuracy = 0.5 * ((logits.argmax(1) == labels).mean() + (logits.argmax(0) == labels).mean())
    return 0.5 * (text_to_image + image_to_text), accuracy


def zero_shot_recall(biencoder: encoder.BiEncoder, data: config.DataConfig, workdir: str,
                     split: str, batch_size: int) -> dict[str, float]:
    texts, images, captions = [], [], []
    for batch in corpus.batches(data, workdir, split, biencoder.arch.text_max_length, batch_size):
        texts.append(biencoder.embed_texts(batch["token_ids"]))
        images.append(biencoder.embed_images(batch["image"]))
        captions += [row.tobytes() for row in np.asarray(batch["token_ids"])]
    similarity = np.concatenate(texts) @ np.concatenate(images).T
    return {**recall.recall_figures(similarity, captions),
            f"{split}_documents": int(similarity.shape[0])}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def learning_rate_schedule(retrieval: config.RetrievalConfig) -> optax.Schedule:
    """Linear warmup (at most train_steps - 1 steps), then cosine decay to 0 at train_steps."""
    return warmup_cosine(retrieval.learning_rate,
                         min(retrieval.warmup_steps, retrieval.train_steps - 1),
                         retrieval.train_steps)


def make_optimizer(retrieval: config.RetrievalConfig) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(retrieval)
    # CLIP: no weight decay on gains, biases, the class token or the temperature (vectors/scalars).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-6,
                       weight_decay=retrieval.weight_decay, mask=decay_mask)


def make_train_step(arch: encoder.ClipArchitecture, optimizer: optax.GradientTransformation,
                    max_logit_scale: float):
    model = encoder.ClipModel(arch)

    def loss_fn(params, token_ids, images):
        pixels = encoder.preprocess_images(images, arch.image_size)
        text, image, _ = model.apply({"params": params}, token_ids, pixels)
        scale = encoder.logit_scale_value(params, max_logit_scale)
        loss, accuracy = contrastive_loss(encoder.normalise(text), encoder.normalise(image), scale)
        return loss, (accuracy, scale)

    def train_step(params, opt_state, token_ids, images):
        (loss, (accuracy, scale)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, token_ids, images)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params = {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0,
                                                    jnp.log(max_logit_scale))}
        metrics = {"loss": loss, "accuracy": accuracy, "temperature_inverse": scale,
                   "grad_norm": optax.global_norm(grads)}
        return params, opt_state, metrics

    return jax.jit(train_step, donate_argnums=(0, 1))


def training_batches(data: config.DataConfig, workdir: str, retrieval: config.RetrievalConfig,
                     seed: int):
    dataset = corpus.tokenized(data, workdir, "train", retrieval.text_max_length)
    dataset = (dataset.repeat().shuffle(10_000, seed=seed)
               .batch(retrieval.batch_size, drop_remainder=True).prefetch(2))
    for batch in dataset.as_numpy_iterator():
        yield batch["token_ids"], batch["image"]


def write_architecture(directory: epath.Path, arch: encoder.ClipArchitecture) -> None:
    path = directory / encoder.ARCHITECTURE_FILE
    if path.exists() and encoder.ClipArchitecture.from_json(path.read_text()) != arch:
        raise config.ConfigError(
            f"{directory} holds an encoder of another architecture ({path}); use a new "
            "--workdir or set config.retrieval.encoder_dir")
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(arch.to_json() + "\n")


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming if possible), then returns and writes the test-split figures. On SIGTERM
    it saves and raises `run_control.TrainingStopped` (exit status 0); a NaN / inf loss raises
    `NonFiniteError`."""
    # ---- config
    data = config.data_config(cfg)
    retrieval = config.retrieval_config(cfg)
    arch = encoder.architecture_for(retrieval, data.image_size)
    out_dir = encoder.encoder_dir(retrieval, workdir)
    write_architecture(out_dir, arch)
    tf.config.set_visible_devices([], "GPU")

    # ---- model, optimizer, checkpoint
    optimizer = make_optimizer(retrieval)
    params = encoder.init_params(arch, jax.random.key(retrieval.seed))
    opt_state = optimizer.init(params)
    # SIGTERM saves and stops (exit 0); a non-finite loss stops naming the step (run_control).
    with RunControl(STAGE, out_dir / encoder.CHECKPOINT_SUBDIR, 2, watch=("loss", "grad_norm"),
                    advice="lower config.retrieval.learning_rate") as run:
        start_step = 0
        found = run.restore_latest(ocp.args.Composite(
            params=ocp.args.StandardRestore(params), opt_state=ocp.args.StandardRestore(opt_state)))
        if found is not None:
            restored, start_step = found
            params, opt_state = restored["params"], restored["opt_state"]
        num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        logging.info("retrieval encoder: %d parameters, %s", num_params, arch)

        # ---- loop
        train_step = make_train_step(arch, optimizer, retrieval.max_logit_scale)
        writer = metric_writers.create_default_writer(str(out_dir / "logs"),
                                                      just_logging=jax.process_index() > 0)
        report = periodic_actions.ReportProgress(num_train_steps=retrieval.train_steps,
                                                 writer=writer, every_steps=retrieval.log_every)
        batches = training_batches(data, workdir, retrieval, seed=retrieval.seed + start_step)
        first_losses, last_losses = [], []
        started = time.perf_counter()
        for step in range(start_step + 1, retrieval.train_steps + 1):
            token_ids, images = next(batches)
            params, opt_state, metrics = train_step(params, opt_state, token_ids, images)
            run.record(step, metrics)
            report(step)
            is_last = step == retrieval.train_steps
            stopping = run.stop_requested()
            if step % retrieval.log_every == 0 or is_last or stopping:
                taken = run.take()
                first_losses += [float(values["loss"]) for logged, values in taken
                                 if logged <= start_step + retrieval.log_every]
                scalars = {name: float(value) for name, value in taken[-1][1].items()}
                writer.write_scalars(step, scalars)
                last_losses.append(scalars["loss"])
            if step % retrieval.checkpoint_every == 0 or is_last or stopping:
                run.save(step, ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                  opt_state=ocp.args.StandardSave(opt_state)))
            if stopping:
                writer.flush()
                run.stop(step)
    train_seconds = time.perf_counter() - started

    # ---- evaluation
    biencoder = encoder.load_trained(out_dir)
    figures = zero_shot_recall(biencoder, data, workdir, "test", retrieval.embed_batch_size)
    figures.update({
        "steps": retrieval.train_steps, "batch_size": retrieval.batch_size,
        "parameters": num_params, "train_seconds": round(train_seconds, 1),
        "first_loss": float(np.mean(first_losses)) if first_losses else None,
        "final_loss": last_losses[-1] if last_losses else None,
        "temperature_inverse": float(encoder.logit_scale_value(biencoder.params,
                                                               retrieval.max_logit_scale)),
        "encoder_fingerprint": biencoder.fingerprint,
        "chance_recall@1": 1.0 / figures["test_documents"],
    })
    writer.write_scalars(retrieval.train_steps, {k: v for k, v in figures.items()
                                                 if k.startswith(("text_to", "image_to"))})
    writer.flush()
    results.write_metrics(workdir, STAGE, figures)
    logging.info("retrieval encoder: %s", figures)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in figures.items() if k != "encoder_fingerprint"))
    warning = near_chance_warning(figures)
    if warning:
        logging.warning("%s", warning)
        print(warning)
    return figures


def near_chance_warning(figures: dict) -> str | None:
    """A warning when the encoder did not learn: its contrastive loss stayed within 10% of where
    it started (it sits on a plateau near log(batch) before it drops; a run stopped there looks
    like this), or test recall@5 stayed under twice chance. Such an encoder scores every candidate
    alike, so the relevance rule (> 0.9 is a near-duplicate) tends to skip them all and pretraining
    silently gets no retrieved documents."""
    chance_at_5 = 5.0 / max(figures["test_documents"], 1)
    recall = figures["text_to_image_recall@5"]
    first, final = figures.get("first_loss"), figures.get("final_loss")
    plateau = first is not None and final is not None and final > 0.9 * first
    if recall >= 2 * chance_at_5 and not plateau:
        return None
    losses = f"; loss {first:.3f} -> {final:.3f}" if first is not None and final is not None else ""
    return (f"[retrieval] warning: the encoder stayed near chance (text-to-image recall@5 "
            f"{recall:.3f}, chance {chance_at_5:.3f}{losses}): train longer "
            f"(config.retrieval.train_steps) or at another learning rate, or its neighbours will "
            f"be few or unrelated")


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    train(cfg, workdir)


if __name__ == "__main__":
    cli.run(main, default_config="retrieval_shapes.py")
