"""The end-to-end demo on the embedded `shapes` data set (the README's first command).

    python -m cm3leon_jax.demo --workdir /tmp/cm3leon_demo

Builds `shapes` (2,000 / 200 / 200 examples at 32x32), checks the verifier against the ground truth
of the shown examples, and writes `<workdir>/demo/examples.png` (examples with their captions) and
`<workdir>/metrics.json`. Later stages add themselves to `cm3leon_jax/demo.py` and their sections
here, each at its tiny setting.

Measured on the 2-core CPU machine: about 15 s wall time, verifier agreement 16/16.
"""

import ml_collections


def get_config(arg=None):
    del arg
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(
        source="shapes", image_size=32, num_train=2000, num_validation=200, num_test=200, seed=0))
    cfg.demo = ml_collections.ConfigDict(dict(grid_examples=16))
    return cfg
