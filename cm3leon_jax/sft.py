"""Instruction tuning (SFT): the pretrained model, a fresh optimizer, loss on the answers only.

    python -m cm3leon_jax.sft --config experiments/sft_tiny.py --workdir W

Starts from the latest pretraining checkpoint in W/pretrain (or `train.init_from`): params only, a
new AdamW state and its own schedule (paper: LR 5e-5, 150 warmup steps). Trains on the mixture of
`config.sft` tasks built from the prepared shards (text-to-image, captioning, VQA, editing,
spatially grounded generation), each example `instruction <break> input <break> output <eos>` with
the prompt masked out of the loss; a task the data cannot supply (VQA on captioning-only data) is
left out and said so (`tasks_for_data`; W/metrics.json "sft_tasks"). Evaluates the loss per task
on the validation split. Same loop,
checkpoints and resume as pretraining (run directory W/sft; figures in W/metrics.json "sft"),
and the same optional text-to-image sample grids at each eval (`config.samples`).
"""

from __future__ import annotations

import dataclasses
import itertools

import ml_collections
import numpy as np

from cm3leon_jax import cli, config, console, paths, results
from cm3leon_jax.data.input import pipeline, sft_tasks
from cm3leon_jax.data.offline import shards
from cm3leon_jax.train import decoder_task, loop, samples

STAGE = "sft"


# Why a task with weight > 0 can have no example in some data.
TASK_NEEDS = {
    "text_to_image": "documents with both a caption and an image",
    "captioning": "documents with both a caption and an image",
    "vqa": "question/answer pairs",
    "editing": "edit pairs (an instruction and the edited image)",
    "grounded_generation": "captions matching config.sft.grounding_pattern",
}


def task_coverage(setup, sft: config.SFTConfig, split: str = "train", limit: int = 1000
                  ) -> dict[str, float]:
    """Share of the first `limit` prepared records of `split` that each SFT task can use."""
    special = pipeline.special_ids(setup.vocab)
    templates = sft_tasks.Templates.from_vocab(sft, setup.vocab, special)
    counts, seen = np.zeros(len(sft_tasks.TASKS)), 0
    for record in itertools.islice(shards.read_records(setup.prepared, split), limit):
        counts += templates.applicable(pipeline.sft_record(record, special))
        seen += 1
    return {task: float(counts[i] / max(seen, 1)) for i, task in enumerate(sft_tasks.TASKS)}


def tasks_for_data(setup, sft: config.SFTConfig) -> tuple[config.SFTConfig, dict]:
    """`sft` with the weight of every task the data cannot supply set to 0, and a report
    {"applied": {task: share of records}, "left_out": {task: reason}}; says it on stdout.

    Captioning-only data (a user folder) trains text-to-image and captioning and says that VQA
    and editing had no examples, instead of failing on an empty VQA eval set."""
    coverage = task_coverage(setup, sft)
    applied, left_out = {}, {}
    for task in sft_tasks.TASKS:
        if getattr(sft, task) <= 0:
            continue
        if coverage[task] > 0:
            applied[task] = coverage[task]
        else:
            left_out[task] = f"the data has no {TASK_NEEDS[task]}"
    if not applied:
        raise ValueError("no SFT task with weight > 0 has an example in the prepared data: "
                         + "; ".join(f"{t}: {r}" for t, r in left_out.items()))
    console.say(f"[{STAGE}] tasks on this data: " + ", ".join(
        f"{t} ({share:.0%} of records)" for t, share in applied.items())
        + ("; left out: " + "; ".join(f"{t} ({r})" for t, r in left_out.items())
           if left_out else ""))
    sft = dataclasses.replace(sft, **{task: 0.0 for task in left_out})
    return sft, {"applied": applied, "left_out": left_out}


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    setup = decoder_task.Setup(cfg, workdir)
    sft, coverage = tasks_for_data(setup, config.sft_config(cfg))
    train = setup.train
    if not train.init_from:
        pretrained = paths.Workdir(workdir).run("pretrain")
        if not paths.Workdir(workdir).has_checkpoint("pretrain"):
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
                                  on_eval=samples.make_on_eval(cfg, setup, STAGE),
                                  vocab_fingerprint=setup.vocab.fingerprint)
    out = loop.train(train, str(paths.Workdir(workdir).run(STAGE)), task, cfg.to_dict(),
                     metrics_workdir=workdir)
    results.write_metrics(workdir, "sft_tasks", coverage)
    return {**out, "tasks": coverage}


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    run(cfg, workdir)


if __name__ == "__main__":
    cli.run(main, default_config="sft_tiny.py")
