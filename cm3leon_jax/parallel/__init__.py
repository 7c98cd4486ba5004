"""Laying the model out on devices: `mesh.py` (the (data, fsdp, tensor) Mesh), `sharding.py`
(logical axis names -> mesh shardings, checks), `distributed.py` (joining the processes of a
multi-host job), `memory_plan.py` (per-device bytes of a run before buying it) and `lowering.py`
(the TPU / GPU programs exported on any machine). The train state and step that use them live in
`cm3leon_jax/train/`."""
