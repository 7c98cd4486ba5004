r"""CM3leon-760M, the paper's table: 24 layers, d_model 1536, 16 heads, sequence 4,096, peak LR
5e-4, 8M-token batches, 1.9T tokens (226,498 steps).

    python -m cm3leon_jax.plan --config experiments/cm3leon_760m.py --mesh data=8,fsdp=8,tensor=1 \
        --batch_size 512

Parameters: 786,432,000 (exact; jax.eval_shape, printed by the plan command above).

Everything else (architecture, vocabulary, optimizer, schedule, TPU layout) as
`experiments/cm3leon_350m.py`, which defines the shared `paper_preset`. TPU (documented, not run):
a v5p-128 slice (64 chips), data=8 x fsdp=8, 4 micro-batches of 512 sequences; the plan command
puts 12.2 GiB per chip (8 sequences per micro-batch, remat=full, xla attention).
"""

from cm3leon_jax import experiment_files


def get_config(arg=None):
    del arg
    return experiment_files.module(__file__, "cm3leon_350m").paper_preset("760m")
