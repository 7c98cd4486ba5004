"""End-to-end demo: `python -m cm3leon_jax.demo --workdir W [--config experiments/demo.py]`.

Runs every stage that exists, at its tiny setting, on the embedded `shapes` data set, and leaves
something to look at after each (`W/demo/*.png`) plus `W/metrics.json`. Stages so far:

1. data: build `shapes`, write a grid of examples with captions, check the verifier agrees with the
   ground truth on them.
"""

from __future__ import annotations

import time

from absl import logging
from etils import epath
import ml_collections

from cm3leon_jax import cli, config, results, visualize
from cm3leon_jax.data import sources
from cm3leon_jax.data.shapes import builder as shapes_builder
from cm3leon_jax.data.shapes import verifier


def data_stage(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    data = config.data_config(cfg)
    ready = sources.prepared_builder(data, workdir)
    sizes = {split: ready.info.splits[split].num_examples for split in sources.SPLITS}
    logging.info("data set %s: %s", ready.info.full_name, sizes)
    examples = list(sources.numpy_examples(data, workdir, "train", limit=cfg.demo.grid_examples))
    grid = epath.Path(workdir) / "demo" / "examples.png"
    visualize.save_grid(grid, [e["image"] for e in examples], [e["caption"] for e in examples])
    figures = {f"{split}_examples": n for split, n in sizes.items()}
    if data.source == "shapes":
        agree = sum(verifier.matches(e["image"], shapes_builder.decode_objects(e["objects"]))
                    for e in examples)
        figures["verifier_agreement"] = agree / len(examples)
        logging.info("verifier agrees with the ground truth on %d/%d shown examples", agree,
                     len(examples))
    print(f"[demo] data: {sizes}; examples with captions -> {grid}")
    return figures


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    start = time.perf_counter()
    done = {}
    done["data"] = data_stage(cfg, workdir)
    seconds = time.perf_counter() - start
    results.write_metrics(workdir, "demo", {"stages": list(done), "wall_seconds": seconds,
                                            **{f"{k}/{m}": v for k, f in done.items()
                                               for m, v in f.items()}})
    print(f"[demo] finished {len(done)} stage(s) in {seconds:.0f} s: {', '.join(done)}; "
          f"figures in {epath.Path(workdir) / 'metrics.json'}")


if __name__ == "__main__":
    cli.run(main, default_config="demo.py")
