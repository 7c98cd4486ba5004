"""Decoding: from a trained decoder to images and text.

Read in this order: `sampling.py` (temperature / top-k / top-p / the draw), `constraints.py`
(which ids each position may take: exactly h*w image codes then `<eoi>`, no codes in text),
`guidance.py` (classifier-free guidance, contrastive decoding TopK), `models/kv_cache.py` (the
decode cache the decoder itself reads and writes), `decode.py` (the jit-compiled
`lax.while_loop` that puts them together), `prompts.py` (task prompts in the trained layouts),
`retrieved_context.py` (retrieved documents before the prompt), `rerank.py` (best of N by CLIP
score), `generator.py` (tasks on strings and images; `Generator.from_workdir`). The command line is
`python -m cm3leon_jax.generate`. The decoding loop on ids is `generation.decode.decode`.
"""

from cm3leon_jax.generation.constraints import Constraints
from cm3leon_jax.generation.decode import DecodeOutput
from cm3leon_jax.generation.generator import (Generator, ImageResult, TextResult,
                                              generate_images, generate_text)
from cm3leon_jax.generation.prompts import Prompt, PromptBuilder
from cm3leon_jax.generation.sampling import SamplingConfig

__all__ = ["Constraints", "DecodeOutput", "Generator", "ImageResult", "Prompt", "PromptBuilder",
           "SamplingConfig", "TextResult", "generate_images", "generate_text"]
