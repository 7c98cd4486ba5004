"""Training input (tf.data, online): `pipeline.py` reads the prepared shards and yields global
batches; `layout.py` (one example's token segments), `cm3.py` (CM3 masking), `packing.py` (rows of
`seq_len`) and `sft_tasks.py` (instruction-tuning examples) are its steps.
"""
