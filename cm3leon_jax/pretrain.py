"""Pretraining with the CM3 objective on retrieval-augmented documents.

    python -m cm3leon_jax.pretrain --config experiments/pretrain_tiny.py --workdir W

Reads the shards that `python -m cm3leon_jax.data.prepare` wrote into W/prepared (each row:
`ret_1 <break> ret_2 <break> query <eos>`, CM3-masked and packed), trains the decoder with the
shared loop (checkpoints, resume, metrics in W/pretrain, final figures in W/metrics.json under
"pretrain"), and evaluates on the validation split with and without the retrieved documents
(loss and perplexity by modality). With `config.samples.num_captions` > 0 each eval also writes a
grid of text-to-image samples for fixed validation captions to TensorBoard (`train/samples.py`).
"""

from __future__ import annotations

import ml_collections

from cm3leon_jax import cli, paths
from cm3leon_jax.data.input import pipeline
from cm3leon_jax.train import decoder_task, loop, samples

STAGE = "pretrain"


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    setup = decoder_task.Setup(cfg, workdir)
    train, cm3 = setup.train, setup.cm3
    special = pipeline.special_ids(setup.vocab)

    def batches(split: str, **kwargs):
        return pipeline.pretrain_batches(setup.prepared, split, special, cm3,
                                         global_batch_size=train.batch_size,
                                         sharding=setup.batch_sharding, seed=train.seed, **kwargs)

    eval_data = {}
    if "validation" in setup.prepared_splits:
        for name, with_retrieval in (("validation", True), ("validation_no_retrieval", False)):
            eval_data[name] = pipeline.eval_sets(
                lambda r=with_retrieval: batches("validation", repeat=False,
                                                 num_batches=train.eval_batches,
                                                 with_retrieval=r))
    train_data = batches("train", with_retrieval=cm3.with_retrieval)
    task = decoder_task.make_task(STAGE, cfg, setup.mesh, train_data, eval_data,
                                  setup.image_range, setup.fingerprint, cm3.seq_len,
                                  on_eval=samples.make_on_eval(cfg, setup, STAGE),
                                  vocab_fingerprint=setup.vocab.fingerprint)
    return loop.train(train, run_dir(workdir), task, cfg.to_dict(), metrics_workdir=workdir)


def run_dir(workdir: str) -> str:
    return str(paths.Workdir(workdir).run(STAGE))


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    run(cfg, workdir)


if __name__ == "__main__":
    cli.run(main, default_config="pretrain_tiny.py")
