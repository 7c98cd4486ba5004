"""What a run prints for people: progress and summaries, from process 0 only.

On a TPU pod every host runs the same program; a line printed by each would appear once per host.
Library code prints through `say`; errors are not routed here (each host reports its own, and
`cli` prints a failing host's message wherever it happens).
"""

from __future__ import annotations

import sys
from typing import Optional, TextIO

import jax


def say(*parts, file: Optional[TextIO] = None) -> None:
    """`print(*parts, flush=True)` on process 0; nothing on the other processes."""
    if jax.process_index() == 0:
        print(*parts, file=file or sys.stdout, flush=True)
