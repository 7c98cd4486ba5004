"""Line plots as PNG files (matplotlib, headless): loss curves, parity curves, learning curves.

    plots.line_plot("curves.png", {"ours": (steps, losses), "torch": (steps, theirs)},
                    title="...", xlabel="step", ylabel="loss")

One helper so every benchmark and report draws its curves the same way; matplotlib is imported
only when a plot is made and always with the non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

Series = tuple[Sequence[float], Sequence[float]]


def line_plot(path: str, series: Mapping[str, Series], *, title: str = "", xlabel: str = "",
              ylabel: str = "", log_x: bool = False, log_y: bool = False,
              styles: Optional[Mapping[str, str]] = None, size: tuple[float, float] = (6.4, 4.0),
              panels: Optional[Mapping[str, Mapping[str, Series]]] = None) -> str:
    """Writes one PNG with a line per series (or one panel per entry of `panels`, each a
    mapping like `series`; `series` is then ignored); returns `path`."""
    import matplotlib  # noqa: PLC0415 - heavy, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = dict(panels) if panels else {title: series}
    figure, axes = plt.subplots(1, len(groups), figsize=(size[0] * len(groups), size[1]),
                                squeeze=False)
    for ax, (panel_title, panel) in zip(axes[0], groups.items()):
        for name, (x, y) in panel.items():
            style = (styles or {}).get(name, "-")
            ax.plot(np.asarray(x, float), np.asarray(y, float), style, label=name, linewidth=1.4,
                    markersize=3)
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    if panels and title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
