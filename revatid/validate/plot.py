"""Real versus emulated latency CDFs as a PNG, with numpy and zlib only (no matplotlib).

One panel per metric (TTFT, TPOT, ITL, E2E): x is latency in ms from 0 to the largest sample of
either run, y the fraction of samples at or below it; real in blue, emulated in orange. Text
(titles, axis maxima, legend) is drawn with a 3x5 pixel font scaled up.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

BLUE = (31, 119, 180)
ORANGE = (255, 127, 14)
GREY = (200, 200, 200)
BLACK = (0, 0, 0)

# 3x5 glyphs: five rows of three pixels, "#" is ink
_FONT = {
    "0": ("###", "# #", "# #", "# #", "###"), "1": (" # ", "## ", " # ", " # ", "###"),
    "2": ("###", "  #", "###", "#  ", "###"), "3": ("###", "  #", "###", "  #", "###"),
    "4": ("# #", "# #", "###", "  #", "  #"), "5": ("###", "#  ", "###", "  #", "###"),
    "6": ("###", "#  ", "###", "# #", "###"), "7": ("###", "  #", "  #", "  #", "  #"),
    "8": ("###", "# #", "###", "# #", "###"), "9": ("###", "# #", "###", "  #", "###"),
    ".": ("   ", "   ", "   ", "   ", " # "), " ": ("   ",) * 5,
    "-": ("   ", "   ", "###", "   ", "   "), "%": ("# #", "  #", " # ", "#  ", "# #"),
    "A": ("###", "# #", "###", "# #", "# #"), "B": ("## ", "# #", "## ", "# #", "## "),
    "C": ("###", "#  ", "#  ", "#  ", "###"), "D": ("## ", "# #", "# #", "# #", "## "),
    "E": ("###", "#  ", "###", "#  ", "###"), "F": ("###", "#  ", "###", "#  ", "#  "),
    "I": ("###", " # ", " # ", " # ", "###"), "L": ("#  ", "#  ", "#  ", "#  ", "###"),
    "M": ("# #", "###", "###", "# #", "# #"), "N": ("###", "# #", "# #", "# #", "# #"),
    "O": ("###", "# #", "# #", "# #", "###"), "P": ("###", "# #", "###", "#  ", "#  "),
    "R": ("###", "# #", "## ", "# #", "# #"), "S": ("###", "#  ", "###", "  #", "###"),
    "T": ("###", " # ", " # ", " # ", " # "), "U": ("# #", "# #", "# #", "# #", "###"),
    "V": ("# #", "# #", "# #", "# #", " # "), "X": ("# #", "# #", " # ", "# #", "# #"),
    "H": ("# #", "# #", "###", "# #", "# #"), "G": ("###", "#  ", "# #", "# #", "###"),
    "K": ("# #", "# #", "## ", "# #", "# #"), "W": ("# #", "# #", "###", "###", "# #"),
    "Y": ("# #", "# #", "###", " # ", " # "), "Z": ("###", "  #", " # ", "#  ", "###"),
    "=": ("   ", "###", "   ", "###", "   "), ",": ("   ", "   ", "   ", " # ", "#  "),
}


def _glyph(ch: str) -> np.ndarray:
    rows = _FONT.get(ch.upper(), _FONT[" "])
    return np.array([[c == "#" for c in row] for row in rows])


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.img = np.full((height, width, 3), 255, dtype=np.uint8)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        self.img[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = color

    def polyline(self, xs: np.ndarray, ys: np.ndarray, color: tuple[int, int, int],
                 width: int = 2) -> None:
        """Straight segments between consecutive points, sampled densely."""
        h, w, _ = self.img.shape
        for (xa, ya), (xb, yb) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True),
                                      strict=False):
            n = int(max(abs(xb - xa), abs(yb - ya))) + 2
            px = np.rint(np.linspace(xa, xb, n)).astype(int)
            py = np.rint(np.linspace(ya, yb, n)).astype(int)
            for dx in range(width):
                for dy in range(width):
                    ok = (px + dx >= 0) & (px + dx < w) & (py + dy >= 0) & (py + dy < h)
                    self.img[py[ok] + dy, px[ok] + dx] = color

    def text(self, x: int, y: int, s: str, color: tuple[int, int, int] = BLACK,
             scale: int = 2) -> None:
        for i, ch in enumerate(s):
            g = np.kron(_glyph(ch), np.ones((scale, scale), dtype=bool))
            x0 = x + i * 4 * scale
            region = self.img[y:y + g.shape[0], x0:x0 + g.shape[1]]
            region[g[:region.shape[0], :region.shape[1]]] = color

    def png(self) -> bytes:
        h, w, _ = self.img.shape
        raw = b"".join(b"\x00" + self.img[r].tobytes() for r in range(h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def cdf_png(real: dict[str, list[float]], emulated: dict[str, list[float]], path: Path,
            title: str = "") -> None:
    """Write the CDF panels of latency samples (seconds, by metric) to `path`."""
    metrics = [m for m in ("ttft", "tpot", "itl", "e2e") if real.get(m) and emulated.get(m)]
    pw, ph, margin = 300, 220, 40
    c = Canvas(pw * len(metrics) + margin, ph + 2 * margin + 20)
    c.text(margin, 8, title or "REAL VS EMULATED", scale=2)
    c.rect(margin, 28, margin + 16, 32, BLUE)
    c.text(margin + 22, 26, "REAL", BLUE)
    c.rect(margin + 80, 28, margin + 96, 32, ORANGE)
    c.text(margin + 102, 26, "EMULATED", ORANGE)
    for i, m in enumerate(metrics):
        x0, y0 = margin + i * pw, margin + 20
        x1, y1 = x0 + pw - margin, y0 + ph - margin
        c.rect(x0, y1, x1 + 1, y1 + 1, BLACK)  # axes
        c.rect(x0, y0, x0 + 1, y1 + 1, BLACK)
        for frac in (0.25, 0.5, 0.75, 1.0):
            yy = int(y1 - frac * (y1 - y0))
            c.rect(x0 + 1, yy, x1, yy + 1, GREY)
        xmax = max(max(real[m]), max(emulated[m])) * 1e3 or 1.0
        for data, color in ((real[m], BLUE), (emulated[m], ORANGE)):
            xs = np.sort(np.asarray(data) * 1e3)
            ys = np.arange(1, xs.size + 1) / xs.size
            # a step function: each sample raises the curve by 1/n
            sx = np.repeat(xs, 2)
            sy = np.concatenate([[0.0], np.repeat(ys, 2)[:-1]])
            sx = np.concatenate([[0.0], sx])
            sy = np.concatenate([[0.0], sy])
            c.polyline(x0 + sx / xmax * (x1 - x0), y1 - sy * (y1 - y0), color)
        c.text(x0 + 4, y0 - 14, f"{m.upper()} MS")
        c.text(x0, y1 + 6, "0")
        label = _fmt(xmax)
        c.text(x1 - len(label) * 8, y1 + 6, label)
        c.text(x0 - 28, y0 - 2, "1.0", scale=2)
    path.write_bytes(c.png())
