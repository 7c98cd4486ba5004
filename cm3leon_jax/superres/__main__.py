"""`python -m cm3leon_jax.superres --config experiments/superres_shapes.py --workdir W`: trains
the upsampler, then evaluates it on the test split (`superres/stage.py`)."""

from cm3leon_jax import cli
from cm3leon_jax.superres import stage

if __name__ == "__main__":
    cli.run(stage.run, default_config="superres_shapes.py")
