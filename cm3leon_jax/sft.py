"""Instruction tuning (SFT): the pretrained model, a fresh optimizer, loss on the answers only.

    python -m cm3leon_jax.sft --config experiments/sft_tiny.py --workdir W

Starts from the latest pretraining checkpoint in W/pretrain (or `train.init_from`): params only, a
new AdamW state and its own schedule (paper: LR 5e-5, 150 warmup steps). Trains on the mixture of
`config.sft` tasks built from the prepared shards (text-to-image, captioning, VQA, editing,
spatially grounded generation), each example `instruction <break> input <break> output <eos>` with
the prompt masked out of the loss. Evaluates the loss per task on the validation split. Same loop,
checkpoints and resume as pretraining (run directory W/sft; figures in W/metrics.json "sft"),
and the same optional text-to-image sample grids at each eval (`config.samples`).
"""

from __future__ import annotations

import dataclasses

from etils import epath
import ml_collections

from cm3leon_jax import cli, config
from cm3leon_jax.data import pipeline, sft_tasks
from cm3leon_jax.train import decoder_task, loop, samples

STAGE = "sft"


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    setup = decoder_task.Setup(cfg, workdir)
    sft = config.sft_config(cfg)
    train = setup.train
    if not train.init_from:
        pretrained = epath.Path(workdir) / "pretrain"
        if not (pretrained / "checkpoints").exists():
            raise FileNotFoundError(f"no pretraining checkpoint in {pretrained}: run "
                                    "`python -m cm3leon_jax.pretrain` first or set "
                                    "--config.train.init_from")
        train = dataclasses.replace(train, init_from=str(pretrained))

    def batches(split: str, **kwargs):
        return pipeline.sft_batches(setup.prepared, split, setup.vocab, setup.cm3, sft,
                                    global_batch_size=train.batch_size,
                                    sharding=setup.batch_sharding, seed=train.seed, **kwargs)

    eval_data = {}
    if "validation" in setup.prepared_splits:
        weights = {task: getattr(sft, task) for task in sft_tasks.TASKS}
        for task_name in (t for t, w in weights.items() if w > 0):
            eval_data[task_name] = pipeline.eval_sets(
                lambda t=task_name: batches("validation", repeat=False,
                                            num_batches=train.eval_batches, tasks=(t,)))
    task = decoder_task.make_task(STAGE, cfg, setup.mesh, batches("train"), eval_data,
                                  setup.image_range, setup.fingerprint, setup.cm3.seq_len,
                                  on_eval=samples.make_on_eval(cfg, setup, STAGE))
    return loop.train(train, str(epath.Path(workdir) / STAGE), task, cfg.to_dict(),
                      metrics_workdir=workdir)


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    run(cfg, workdir)


if __name__ == "__main__":
    cli.run(main, default_config="sft_tiny.py")
