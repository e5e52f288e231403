"""PNG bytes from figures and image tiles (the charts and grids every view writes).
"""

from __future__ import annotations

import io

import cv2
import numpy as np


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (laid out tight), closed afterwards."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def grid_png(tiles: list[np.ndarray], cols: int) -> bytes:
    """Equal-size RGB tiles laid out ``cols`` per row (the last row padded black), as PNG bytes."""
    blank = np.zeros_like(tiles[0])
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    grid = np.vstack([np.hstack(r + [blank] * (cols - len(r))) for r in rows])
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return buf.tobytes()


def fit(img: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """``img`` scaled (area) to fit inside ``box`` (w, h), aspect kept."""
    s = min(box[0] / img.shape[1], box[1] / img.shape[0])
    size = (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)
