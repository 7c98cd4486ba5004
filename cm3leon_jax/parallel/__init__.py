"""Laying the model out on devices: `mesh.py` (the (data, fsdp, tensor) Mesh), `sharding.py`
(logical axis names -> mesh shardings, checks) and `distributed.py` (joining the processes of a
multi-host job). The train state and step that use them live in `cm3leon_jax/train/`."""
