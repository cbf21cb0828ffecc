"""The PNG of `edgeds compare`: latency and TTFT distributions of the two artifacts.

With matplotlib (the `bench` extra) a labelled figure of the two cumulative distributions; without
it the same curves drawn by hand into a plain PNG (no text: the JSON file holds the numbers), so
a compare never fails for want of a plotting library.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

COLORS = {"a": (31, 119, 180), "b": (255, 127, 14)}  # matplotlib's first two


def write_plot(latencies: dict, path: Path, labels: dict[str, str]) -> str | None:
    """Write the plot; returns a note when it was drawn without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        write_png(path, _raster(latencies))
        return ("matplotlib is not installed (pip install 'edgeds[bench]'): the plot has no "
                "labels (A blue, B orange; left latency, right TTFT)")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("latency_s", "ttft_s"), ("request latency", "TTFT")):
        for side in ("a", "b"):
            v = np.sort(latencies[side][key])
            if len(v):
                ax.step(v * 1000, np.arange(1, len(v) + 1) / len(v), where="post",
                        label=f"{side.upper()}: {labels[side]}",
                        color=[c / 255 for c in COLORS[side]])
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("fraction of prompts")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _raster(latencies: dict, width: int = 400, height: int = 300) -> np.ndarray:
    """Two panels of cumulative distributions as an RGB array (white ground, grey axes)."""
    img = np.full((height, 2 * width, 3), 255, np.uint8)
    margin = 20
    for panel, key in enumerate(("latency_s", "ttft_s")):
        x0 = panel * width + margin
        w, h = width - 2 * margin, height - 2 * margin
        img[margin + h, x0:x0 + w] = 120
        img[margin:margin + h, x0] = 120
        values = [np.sort(latencies[s][key]) for s in ("a", "b")]
        top = max((v[-1] for v in values if len(v)), default=0.0) or 1.0
        for side, v in zip(("a", "b"), values):
            if not len(v):
                continue
            for px in range(w):
                frac = np.searchsorted(v, top * px / (w - 1), side="right") / len(v)
                py = margin + h - 1 - round(frac * (h - 1))
                img[max(py - 1, 0):py + 1, x0 + px] = COLORS[side]
    return img


def write_png(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG (signature, IHDR, one IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))  # filter 0 on every row
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)
