"""Charts as PNG files: one way to start a figure (matplotlib without a display) and one way to save it
(atomically, without the matplotlib version in the file, so equal charts give equal bytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferdet.utils.io import atomic_path


def figure(*args: Any, **kwargs: Any):
    """``plt.subplots(*args, **kwargs)`` on the Agg backend: ``(fig, axes)``."""
    import matplotlib  # heavy: loaded only when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: Any, path: str | Path) -> None:
    """Lay out, write ``path`` as PNG (complete or not at all), and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
