r"""CM3leon-7B, the paper's table: 32 layers, d_model 4096, 32 heads, sequence 4,096, peak LR
1.2e-4, 8M-token batches, 2.4T tokens (286,102 steps).

    python -m cm3leon_jax.plan --config experiments/cm3leon_7b.py --mesh data=16,fsdp=16,tensor=1 \
        --batch_size 1024

Parameters: 6,727,663,616 (exact; jax.eval_shape, printed by the plan command above).

Everything else (architecture, vocabulary, optimizer, schedule, TPU layout) as
`experiments/cm3leon_350m.py`, which defines the shared `paper_preset`. TPU (documented, not run):
a v5p-512 slice (256 chips), data=16 x fsdp=16, 2 micro-batches of 1,024 sequences; the plan
command puts 14.9 GiB per chip (4 sequences per micro-batch, remat=full, xla attention).
"""

from cm3leon_jax import experiment_files


def get_config(arg=None):
    del arg
    return experiment_files.module(__file__, "cm3leon_350m").paper_preset("7b")
