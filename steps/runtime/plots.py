"""Plots people look at in cards and MLflow: PNG bytes drawn with matplotlib's Agg renderer (no pyplot, no GUI).

Sized for a laptop screen (about 650 to 800 pixels wide at 100 dpi), labelled axes and titles, a faint grid,
no top/right frame: nothing on the figure that does not carry information.
"""
from __future__ import annotations

DPI = 100
SINGLE = (6.4, 4.2)  # inches: one plot
WIDE = (8.0, 3.6)  # two plots side by side
TALL = (8.0, 5.2)  # two plots stacked, sharing the x axis


def figure(size=SINGLE, rows: int = 1, cols: int = 1, sharex: bool = False):
    """A matplotlib Figure (no pyplot: no global state) and its axes (one, or a flat list)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False).ravel().tolist()
    for ax in axes:
        tidy(ax)
    return fig, (axes[0] if len(axes) == 1 else axes)


def tidy(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)


def png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def moving_average(values, window: int):
    """Trailing mean over up to `window` points (shorter at the start), as a list."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < 2:
        return values.tolist()
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return ((sums[idx] - sums[start]) / (idx - start)).tolist()
