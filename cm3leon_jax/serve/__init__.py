"""`python -m cm3leon_jax.serve`: a local web page over a trained workdir (the `[serve]` extra).

service.py holds the model and the tasks (no web code), run_view.py reads the run's records,
page.py lays out the gradio page.
"""
