"""A tiny next-token model as a training `Task`, to test the shared loop without the decoder.

Run as a script it trains to `--steps` in `--workdir` (used by the SIGTERM / kill tests).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax.config import TrainConfig
from cm3leon_jax.train import loop

VOCAB, DIM, SEQ, ROWS = 32, 16, 8, 8


class CountingData:
    """Batch i is a pure function of (seed, i): the position is the whole iterator state."""

    def __init__(self, mesh, seed=0, crash_at=None, sleep=0.0, nan_at=None):
        self.position, self.seed, self.mesh = 0, seed, mesh
        self.crash_at, self.sleep, self.nan_at = crash_at, sleep, nan_at
        self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def __next__(self):
        if self.crash_at is not None and self.position == self.crash_at:
            raise SystemExit("simulated crash")
        if self.sleep:
            import time
            time.sleep(self.sleep)
        rng = np.random.default_rng([self.seed, self.position])
        tokens = rng.integers(1, VOCAB, (ROWS, SEQ + 1)).astype(np.int32)
        tokens[:, 1::2] = (tokens[:, 0::2][:, : tokens[:, 1::2].shape[1]] * 3) % VOCAB  # learnable
        weights = np.ones((ROWS, SEQ), np.float32)
        if self.nan_at is not None and self.position == self.nan_at:
            weights[:] = np.nan
        self.position += 1
        return jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                               "weights": weights}, self.sharding)

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = int(state["position"])


def init_params(rng):
    a, b = jax.random.split(rng)
    return {"embed": jax.random.normal(a, (VOCAB, DIM)) * 0.1,
            "out": {"kernel": jax.random.normal(b, (DIM, VOCAB)) * 0.1}}


def loss_fn(params, batch, rng):
    del rng
    hidden = params["embed"][batch["inputs"]]
    logits = hidden @ params["out"]["kernel"]
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
    weights = batch["weights"]
    loss = jnp.sum(nll * weights)
    return loss, {"loss": loss, "tokens": jnp.sum(weights),
                  "even_loss": jnp.sum((nll * weights)[:, 0::2]),
                  "even_tokens": jnp.sum(weights[:, 0::2])}


def make_task(mesh, data=None, width=DIM):
    global DIM
    DIM = width
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = data or CountingData(mesh)
    return loop.Task(
        name="toy", init_params=init_params,
        param_shardings=lambda abstract: jax.tree.map(lambda _: replicated, abstract),
        batch_sharding=data.sharding, loss_fn=loss_fn, train_data=data,
        eval_data={"validation": lambda: (CountingData(mesh, seed=99).__next__() for _ in range(2))},
        tokens_per_batch=ROWS * SEQ, flops_per_token=6 * 2 * VOCAB * DIM,
        model_signature={"vocab": VOCAB, "dim": width}, data_fingerprint="toy-data")


def mesh():
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


if __name__ == "__main__":
    workdir, steps, sleep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    the_mesh = mesh()
    cfg = TrainConfig(steps=steps, batch_size=ROWS, warmup_steps=2, log_every=1,
                      checkpoint_every=1000, async_checkpoints=True)
    loop.train(cfg, workdir, make_task(the_mesh, CountingData(the_mesh, sleep=sleep)))
