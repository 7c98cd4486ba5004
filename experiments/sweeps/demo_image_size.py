"""How image resolution and data-set size move the end-to-end demo: 2 sizes x 2 set sizes = 4 runs.

    python -m cm3leon_jax.sweep --config experiments/demo.py \
        --sweep experiments/sweeps/demo_image_size.py --entry cm3leon_jax.demo \
        --finished_stage demo --workdir /tmp/sweeps/demo_image_size

Each run is a full `python -m cm3leon_jax.demo` (every stage the demo has) in
`/tmp/sweeps/demo_image_size/<the run's overrides>` (the VQ-GAN's image size moves with the
data's); the table at the end and `sweep_summary.csv` put every stage's final figures side by side.
Both sizes are multiples of 8 (config.data's rule for the VQ-GAN); a 16x16 image has a quarter of
the pixels, hence a quarter of the image tokens, of a 32x32 one. The question: how much of the
demo's quality comes from resolution and how much from the number of training scenes.
`--finished_stage demo` counts a run as done only once the demo has written its final figures (its
`demo` entry in metrics.json). On a TPU VM: `tpu/sweep.sh --name NAME --zone ZONE -- <the same flags>`.

Measured on the 2-core CPU machine with the demo's data stage (the only stage it had then): 51 s
for the four runs. The shapes verifier agrees with the ground truth on all 16 shown examples at
32x32 (both set sizes), but only on 9/16 (500 scenes) and 3/16 (2,000 scenes) at 16x16: the
verifier's figures mean something from 32x32 up, which is why 32 stays the demo's default.
"""

from cm3leon_jax.sweep.spec import product, zip_


def get_sweep():
    # The VQ-GAN reads the data's images, so its size moves with them.
    return product(zip_({"data.image_size": [16, 32], "vqgan.image_size": [16, 32]}),
                   {"data.num_train": [500, 2000]})
