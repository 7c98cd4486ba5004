"""Laying the model out on devices: `mesh.py` (the (data, fsdp, tensor) Mesh), `sharding.py`
(logical axis names -> mesh shardings, checks), `train_state.py` (a sharded params + AdamW state)
and `train_step.py` (a minimal jitted, donated, explicitly sharded train step)."""
