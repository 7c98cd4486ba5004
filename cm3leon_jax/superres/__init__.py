"""Super-resolution: a second decoder that turns base-resolution image codes into high-resolution
ones (CM3leon's separately trained upsampling stage).

`pairs.py` makes the training pairs, `upsampler.py` is the model at inference (its vocabulary,
rows and decoding), `stage.py` trains and evaluates it; `python -m cm3leon_jax.superres` runs it.
"""
