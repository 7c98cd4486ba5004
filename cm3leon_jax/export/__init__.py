"""Export to (and import from) Hugging Face transformers checkpoints.

    python -m cm3leon_jax.export --workdir W --format hf --out DIR [--stage pretrain|sft]
    python -m cm3leon_jax.export import --from DIR --workdir W

Read in this order: `hf_config.py` (which transformers architecture each preset is, and what it
cannot express), `hf_tensors.py` (tensor names and layouts, both directions), `param_sources.py`
(reading a checkpoint one leaf at a time), `safetensors_stream.py` (sharded streaming writer and
reader), `hf_export.py` (the export), `hf_import.py` (the import), `tokenizer_files.py`,
`vqgan_hf.py`, `loader.py` (tokenizers next to the weights), `model_card.py` (README.md),
`verify.py` (our logits and greedy decoding against transformers'), `tf_saved_model.py`
(TensorFlow SavedModel via jax2tf), `__main__.py` (command line). docs/EXPORT.md has the tour.
"""
