"""Tokenizers: images -> VQ-GAN codes (`vqgan.py`, `image_tokenizer.py`), text -> sentencepiece
pieces (`text.py`); `train_vqgan.py` trains the VQ-GAN, `train_all.py` trains both and builds the
unified vocabulary (`cm3leon_jax/vocab.py`)."""
