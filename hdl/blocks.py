"""Block RAM geometries of the part families: for engines that size their ROM words to them, and
for the resource model (:mod:`zeroskip.compiler.resources`), which maps memories as Yosys's
``memory_libmap`` does."""

from __future__ import annotations

import math

__all__ = ["BLOCK_RAMS", "fit_blocks", "rom_blocks"]

#: Per family: the (width, depth) geometries of one block RAM, and Yosys's cost of one block.
BLOCK_RAMS = {
    "ice40": (((16, 256), (8, 512), (4, 1024), (2, 2048)), 64),
    "ecp5": (((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)), 128),
}


def fit_blocks(width, depth, geometries):
    """The fewest blocks of one of ``geometries`` that hold ``depth`` words of ``width`` bits."""
    return min(math.ceil(width / w) * math.ceil(depth / d) for w, d in geometries)


def rom_blocks(width, depth, family):
    """Block RAMs of a ROM read through one port on ``family``: 0 where Yosys keeps it as logic
    (a sixteenth of a cost unit a bit, chosen on a tie)."""
    geometries, cost = BLOCK_RAMS[family]
    blocks = fit_blocks(width, depth, geometries)
    return 0 if width * depth / 16 <= blocks * cost else blocks
