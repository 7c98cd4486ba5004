"""The reference at its best, shared by the benchmarks that time an external one (torch).

A reference timed at one setting can lose for reasons that are not ours (torch at one intra-op
thread once decoded 1.7x slower than at two, which made a 1.2x lead read 2.35x). So each
benchmark times the reference at every setting that can be its fastest here (thread counts,
attention implementations), keeps every setting's figure, and divides ours by the best.
"""

from __future__ import annotations

import itertools
import platform

TORCH_THREADS = "1,2"
THREADS_HELP = "torch intra-op thread counts, each timed; the fastest is the reference"
ATTENTION = ("eager", "sdpa")  # what transformers' OPT and our torch VQ-GAN encoder offer


def thread_counts(text: str) -> tuple[int, ...]:
    """`--torch_threads` ("1,2") as counts."""
    return tuple(int(count) for count in text.split(","))


def settings(threads: tuple[int, ...], attention: tuple[str, ...] = ATTENTION
             ) -> list[tuple[str, int, str]]:
    """(name, threads, attention) of every combination, named like "2_threads_sdpa"."""
    return [(f"{count}_threads_{kind}", count, kind)
            for count, kind in itertools.product(threads, attention)]


def best(by_setting: dict[str, float]) -> tuple[str, float]:
    """(setting, figure) of the fastest setting."""
    name = max(by_setting, key=by_setting.get)
    return name, by_setting[name]


def best_per_figure(by_setting: dict[str, dict[str, float]]
                    ) -> tuple[dict[str, float], dict[str, str]]:
    """For settings that each measure several figures: the best value of each figure, and the
    setting that gave it (a setting can be fastest at one figure and not another)."""
    values, names = {}, {}
    for figure in next(iter(by_setting.values())):
        names[figure], values[figure] = best({name: figures[figure]
                                              for name, figures in by_setting.items()})
    return values, names


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo: this workplace's machines change between sessions, and
    a figure is only comparable with others from the same CPU."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def percent(rate: float, bound: float) -> str:
    return f"{100 * rate / bound:.0f}% of bound"
