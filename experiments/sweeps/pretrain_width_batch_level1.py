"""Where the tiny model's pretraining compute goes furthest: width and batch at equal tokens.

    W=/tmp/sweeps/width_batch; D=/tmp/cm3leon_demo     # a finished demo: tokenizers + shards
    for run in $(python -c "from cm3leon_jax.sweep import spec as sweeps; import importlib.util as u; \
        s = u.spec_from_file_location('s', 'experiments/sweeps/pretrain_width_batch_level1.py'); \
        m = u.module_from_spec(s); s.loader.exec_module(m); \
        print(' '.join(sweeps.run_name(e) for e in m.get_sweep()))"); do
      mkdir -p "$W/$run"; for d in tfds tokenizers prepared retrieval_index; do
        ln -sfn "$D/$d" "$W/$run/$d"; done; done
    python -m cm3leon_jax.sweep --config experiments/pretrain_tiny.py:level1 \
        --sweep experiments/sweeps/pretrain_width_batch_level1.py --entry cm3leon_jax.pretrain \
        --workdir $W

Each run pretrains the demo's model on the demo's prepared level-1 shards (with retrieved
documents) for the same 3.1M training tokens: 400 steps of batch 8 at d_model 128 (the demo's
shape, 4x longer), the same at d_model 192, and 200 steps of batch 16 at d_model 128. The run
directories must hold the prepared shards and tokenizers, hence the links. The table at the end
and `sweep_summary.csv` give each run's validation loss, tokens/s and MFU.

Measured on the 2-core CPU machine (11.5 min for the three runs; CSV in
benchmarks/results/sweep_pretrain_width_batch_level1.csv): validation loss with / without retrieved
documents 0.93 / 2.35 (d=128, batch 8; 202 s), 0.94 / 2.40 (d=192; 258 s), 0.98 / 2.41 (batch
16; 203 s): the demo's shape is the best use of the time (docs/RESULTS.md, "A model that does its
tasks").
"""

from cm3leon_jax.sweep.spec import zip_


def get_sweep():
    return zip_({"model.d_model": [128, 192, 128], "train.batch_size": [8, 8, 16],
                 "train.steps": [400, 400, 200], "train.warmup_steps": [40, 40, 20]})
