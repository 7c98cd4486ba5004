"""The CPU quality run on `shapes` level 3 (1-3 objects, half the backgrounds textured).

The whole chain (one config for every stage, as `pretrain_tiny.py`; W=/tmp/small):

    C=experiments/pretrain_shapes_small.py
    python -m cm3leon_jax.tokenizers.train_all --config $C --workdir $W
    python -m cm3leon_jax.retrieval.train_encoder --config $C --workdir $W
    python -m cm3leon_jax.retrieval.build_index --config $C --workdir $W
    python -m cm3leon_jax.retrieval.neighbours --config $C --workdir $W
    python -m cm3leon_jax.data.prepare --config $C --workdir $W
    python -m cm3leon_jax.pretrain --config $C --workdir $W
    python -m cm3leon_jax.sft --config experiments/sft_shapes_small.py --workdir $W
    python -m cm3leon_jax.evaluate --workdir $W --table --results_md docs/RESULTS.md

The no-retrieval arm of the ablation trains on the same prepared shards without the retrieved
documents (W2 holds links to W's tokenizers, retrieval_* and prepared):
`python -m cm3leon_jax.pretrain --config $C --workdir $W2 --config.cm3.with_retrieval=False`.
Learning curves of both (validation loss and the verifier on eval samples against tokens, from
each run's eval_log.jsonl): `python -m cm3leon_jax.curves --run "with retrieval=$W/pretrain" --run
"without retrieval=$W2/pretrain" --out curves.png` (docs/RESULTS.md).

What the demo learnt on level 1 sets the recipe (docs/RESULTS.md, "A model that does its tasks"):
the VQ-GAN is `vqgan_tiny`'s (local encoder, so a flat background is one code the decoder can
predict; edges weighted in the loss) trained 8,000 steps on level 3; the decoder is the Chameleon
preset at LR 3e-3; SFT steps are where the tasks are learnt. Level 3 has 9.4M object layouts
against level 1's 432, so this run draws 8,000 training scenes instead of 2,000 and a wider
decoder (d_model 192, 4 layers, 6 heads of 32; 2.0M parameters).

Training: batch 8 x 384 tokens, 1,800 steps (5.5M tokens), 100 warmup steps, cosine to 10%; eval
every 300 steps with 16 validation captions sampled once each (top-p 0.3), judged by the verifier
(`config.samples`; the verifier's learning curve).
Measured on the 2-core CPU machine (session 6; docs/RESULTS.md, "The level-3 quality run", with
curves and pictures): VQ-GAN 11.6 min, verifier 0.965 on test reconstructions (30.7 dB);
retrieval 7.1 min (recall@5 0.63); pretraining 31 min (4,000-4,500 tok/s, MFU 37-41% when the
machine was free), validation loss 2.11 with the retrieved documents / 2.45 without at 5.5M
tokens. After `sft_shapes_small` (64 test scenes, CFG 3, top-p 0.3): captioning attributes
0.80, VQA 0.53, text-to-image exact 0.00 / attributes 0.32, editing exact 0.02: short of the
targets on counting and shapes; every eval loss was still falling.
"""

import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    del arg
    cfg = experiment_files.config(__file__, "pretrain_tiny", "level3")
    cfg.data.update(num_train=8000)
    tokenizers = experiment_files.config(__file__, "vqgan_tiny", "level3")
    tokenizers.vqgan_train.update(num_steps=8000, image_every=2000, checkpoint_every=2000)
    cfg.vqgan, cfg.vqgan_train = tokenizers.vqgan, tokenizers.vqgan_train
    cfg.retrieval.update(train_steps=400, checkpoint_every=400)
    cfg.model.update(d_model=192, num_heads=6)
    cfg.train = ml_collections.ConfigDict(dict(
        steps=1800, batch_size=8, lr=3e-3, warmup_steps=100, decay="cosine", weight_decay=0.1,
        log_every=50, eval_every=300, eval_batches=4, checkpoint_every=300))
    cfg.samples = ml_collections.ConfigDict(dict(num_captions=16, num_samples=1, top_p=0.3,
                                                 scale=4))
    return cfg
