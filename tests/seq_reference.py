"""A functional model of the sequential engine's program (:mod:`zeroskip.hdl.seq_plan`): every
memory, the line buffer and its ring, the weight stream and the gather executed as the hardware
does, in Python. It checks the program's encodings against the golden model and gives the unit
tests their expected memory contents."""

from __future__ import annotations

import numpy as np

from zeroskip import reference
from zeroskip.hdl.seq_plan import (BANKS, ConvStep, PoolSumStep, byte_address,
                                   decode_entries)


class Memories:
    """The memory blocks as 16-bit words."""

    def __init__(self, program):
        self.blocks = [np.zeros(max(size, 1), dtype=np.int64) for size in program.act_blocks]

    def write(self, slot, p, c, value):
        byte = byte_address(p, c, slot.channels)
        word = slot.word + (byte >> 1)
        shift = 8 * (byte & 1)
        block = self.blocks[slot.block]
        block[word] = (block[word] & ~(0xFF << shift)) | ((int(value) & 0xFF) << shift)

    def read(self, slot, p, c):
        byte = byte_address(p, c, slot.channels)
        raw = (int(self.blocks[slot.block][slot.word + (byte >> 1)]) >> (8 * (byte & 1))) & 0xFF
        return raw - 256 if slot.act.signed and raw >= 128 else raw

    def load(self, slot, x):
        """``x`` one input as the graph takes it ((C, H, W) or (F,))."""
        values = np.asarray(x).reshape(slot.channels, slot.pixels)
        for p in range(slot.pixels):
            for c in range(slot.channels):
                self.write(slot, p, c, values[c, p])

    def tensor(self, slot):
        """(C, P) of a slot."""
        return np.array([[self.read(slot, p, c) for p in range(slot.pixels)]
                         for c in range(slot.channels)], dtype=np.int64)


def _requantize(values, requant, channel):
    return int(reference.requantize(np.array([[int(values)]]), _channel_requant(requant,
                                                                                  channel))[0, 0])


def _channel_requant(requant, channel):
    from zeroskip import ir
    pick = (lambda a: a[channel:channel + 1] if len(a) > 1 else a)
    return ir.Requant(pick(requant.multiplier), pick(requant.shift), requant.clamp_min,
                      requant.clamp_max, requant.epsilon)


class LineBuffer:
    """8 banks of ``depth`` bytes, each entry tagged with the (source, y, x, c) it holds."""

    def __init__(self, step, memories, depth):
        self.step, self.memories = step, memories
        self.data = np.zeros((BANKS, depth), dtype=np.int64)
        self.tags = np.full((BANKS, depth), None, dtype=object)
        self.filled = 0      # input rows copied

    def fill_to(self, row):
        step = self.step
        height = 1 if step.flat else step.source.height
        while self.filled <= min(row, height - 1):
            y = self.filled
            for s, source in enumerate(step.sources):
                for c in range(source.channels):
                    for x in range(source.width):
                        phase, v = step.reduced_index(y, x)
                        bank, address = step.line_address(s, phase, v, c)
                        self.data[bank, address] = self.memories.read(source, y * source.width
                                                                      + x, c)
                        self.tags[bank, address] = (s, y, x, c)
            self.filled += 1

    def read(self, source, phase, v, c, expected):
        bank, address = self.step.line_address(source, phase, v, c)
        if self.tags[bank, address] != expected:
            raise AssertionError(f"{self.step.node.name}: bank {bank} address {address} holds "
                                 f"{self.tags[bank, address]}, the lane expects {expected}")
        return int(self.data[bank, address])


def _entry_operands(step, g, j, f):
    """Per valid lane: (source, phase, v, c, expected tag) or None (outside), and shift8."""
    base = step.group_base(g)
    pixels = step.group_pixels(g)
    if step.flat:
        return [(0, 0, base + j + i, 0, (0, 0, j + i, 0)) for i in range(len(pixels))], False
    tap_index, local = step.position(j)
    tap = step.taps[tap_index]
    c = (f // step.filters_per_group) * step.group_channels + local
    inside = step.lane_inside(g, tap)
    if step.bounded:
        # The tables the hardware reads give the same lanes.
        klass, (oy0, _) = step.group_class(g), pixels[0]
        low, high = step.tap_rows(tap)
        rows = step.rowsel(klass)
        mask = step.colmask(klass, tap.dx)
        table = [bool(mask >> i & 1) and low <= oy0 + (rows >> 2 * i & 3) <= high
                 for i in range(len(pixels))]
        assert table == inside, (step.node.name, g, tap, table, inside)
    operands = []
    for i, (oy, ox) in enumerate(pixels):
        if not inside[i]:
            operands.append(None)
            continue
        y = oy * step.stride[0] + tap.dy - step.padding[0]
        x = ox * step.stride[1] + tap.dx - step.padding[1]
        operands.append((tap.source, tap.phase, base + tap.offset + i, c, (tap.source, y, x, c)))
    return operands, tap.shift8


def run_conv(step, memories, depth, pool_sums=None):
    weights, positions, last = decode_entries(step.entries)
    for first, count, _, _ in step.chunks:
        mine = (step.entry_filters >= first) & (step.entry_filters < first + count)
        _run_chunk(step, memories, depth, pool_sums, first, count,
                   weights[mine], positions[mine], last[mine])


def _run_chunk(step, memories, depth, pool_sums, first, count, weights, positions, last):
    buffer = LineBuffer(step, memories, depth)
    for g in range(step.groups):
        oldest, newest = step.group_rows(g)
        buffer.fill_to(step.ring_start(oldest) + step.rows_cap - 1)
        assert buffer.filled > newest
        lanes = len(step.group_pixels(g))
        f = first
        acc = [int(step.bias[f])] * lanes
        for weight, j, closes in zip(weights, positions, last):
            operands, shift8 = _entry_operands(step, g, int(j), f)
            for i, operand in enumerate(operands):
                if operand is None:
                    continue
                value = buffer.read(*operand)
                if step.kind == "maxpool":
                    # Offset by 128 for a signed input, as the lanes keep it.
                    acc[i] = max(acc[i], value + 128 if step.source.act.signed else value)
                else:
                    acc[i] += value * int(weight) * (256 if shift8 else 1)
            if closes:
                for i in range(lanes):
                    if step.kind == "maxpool":
                        y = acc[i] - 128 if step.source.act.signed else acc[i]
                    else:
                        y = _requantize(acc[i], step.requant, f)
                    p, c = step.out_pixel(g, i, f)
                    memories.write(step.target, p, c, y)
                    if step.pool_window and p < step.pool_window:
                        pool_sums[c] += y
                f += 1
                if f < first + count:
                    acc = [int(step.bias[f])] * lanes


def run(program, x):
    """The output of one input ``x`` as the program computes it, shaped as the graph's."""
    memories = Memories(program)
    memories.load(program.input, x)
    pool_sums = None
    for step in program.steps:
        if isinstance(step, ConvStep):
            if step.pool_window:
                pool_sums = [0] * step.target.channels
            run_conv(step, memories, program.depth, pool_sums)
        else:
            assert isinstance(step, PoolSumStep)
            for c in range(step.target.channels):
                memories.write(step.target, 0, c, _requantize(pool_sums[c], step.requant, c))
    out = memories.tensor(program.output)
    return out
