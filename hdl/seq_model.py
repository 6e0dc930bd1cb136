"""The sequential engine's cycle model: the sequencer, the filler, the walkers and the drain of
:class:`~zeroskip.hdl.sequential.SequentialEngine`, step by step, without stalls on its streams.

A conv step (cycle 0 its setup): the entry walker reads a chunk's header and parameters
(``2 + HEADER_WORDS + 3 * filters`` cycles), then takes a group descriptor (a cycle) and issues
the chunk's entries, one a cycle. A descriptor is offered once the filler has written its
group's rows; the filler copies a row's words one a cycle (a word whose two bytes share a bank
two), from cycle 1 with a cycle between rows, a row only while it is fewer than ``rows_cap``
rows past the oldest row a group in flight reads. The step ends :data:`DRAIN` cycles after its last request plus the
scanner's beats of the last word. A pool-sum step only loads its parameters and requantizes
its channels' sums. A word waits while the scanner still holds the one before: a beat per
pixel requantized (a ReLU's negative sums need none, but a slot of two pixels at least one) and
a cycle. The inference ends with the output's emission; the next input loads once
the last step reading the input is done, one beat a cycle.
"""

from __future__ import annotations

import numpy as np

from .seq_plan import HEADER_WORDS, ConvStep

__all__ = ["Cycles", "inference_cycles", "step_cycles"]

#: From a request leaving the entry walker to the step's end, besides the last word's beats:
#: gather and lanes, the scanner, the requantizer's 7 stages, the writer, the sequencer.
DRAIN = 16
#: From an entry's issue to its request (the walker's pipeline after the issue cycle).
ISSUE_TO_REQUEST = 6
#: A filler row's words are visible to the group walker this many cycles after the last issue.
ROW_VISIBLE = 4
#: Cycles of the group walker's handshake and the walk's restart per group.
GROUP_CYCLES = 1
#: The sequencer's cycles between steps: its register of the step's end, and the cycle before
#: each step's setup (the step's settings reach their register).
SETTLE = 2


def _row_words(step, y):
    """Filler cycles of input row ``y``: per source and channel the row's words, two cycles for a
    word whose two pixels fall in one line-buffer bank."""
    total = 0
    for source in step.sources:
        width = source.width
        first = (y * width) & 7 if not step.flat else 0
        x = -(first & 1)
        words = conflicts = 0
        while x < width:
            if 0 <= x and x + 1 < width:
                _, v0 = step.reduced_index(y, x)
                _, v1 = step.reduced_index(y, x + 1)
                conflicts += (v0 % 8) == (v1 % 8)
            words += 1
            x += 2
        total += (words + conflicts) * source.channels
    return total


def _beats(step, first, count, negative):
    """The scanner's beats of every word, (groups, filters of the chunk): per slot of two
    pixels the pixels requantized, at least one; a ReLU's negative sums (``negative``, filters x
    output pixels, or None: none known) need none."""
    beats = np.ones((step.groups, count), dtype=np.int64)
    if step.out_flat:
        return beats
    skip = getattr(step, "requant", None) is not None and step.requant.clamp_min >= 0
    width = step.out_width
    for g in range(step.groups):
        pixels = [oy * width + ox for oy, ox in step.group_pixels(g)]
        odd = pixels[0] % 2
        pending = np.ones((count, len(pixels) + odd + 1), dtype=np.int64)
        pending[:, 0] = odd == 0
        pending[:, len(pixels) + odd:] = 0
        if skip and negative is not None:
            pending[:, odd:odd + len(pixels)] = ~negative[first:first + count, pixels]
        slots = pending[:, :pending.shape[1] // 2 * 2].reshape(count, -1, 2).sum(axis=2)
        beats[g] = np.maximum(slots, 1).sum(axis=1)
    return beats


def step_cycles(step, negative=None):
    """Cycles of one step, from its setup to its last write (the sequencer's next cycle sets up
    the next step); ``negative`` as :func:`_beats` takes it."""
    if not isinstance(step, ConvStep):
        # Header and parameters, then the sums requantized, a channel a cycle.
        return 2 + HEADER_WORDS + 3 * step.filters + step.filters + DRAIN
    rows = 1 if step.flat else step.source.height
    row_cost = [_row_words(step, y) for y in range(rows)]
    cap = step.rows_cap if step.rows_cap else rows
    row_ready = []            # when each row's words are visible
    issue_end = 0             # the filler's last issue so far
    group_done = []           # when each group's last entry has read the line buffer
    group_oldest = [step.group_rows(g)[0] for g in range(step.groups)]
    t = 0
    for first, count, _, _ in step.chunks:
        mine = (step.entry_filters >= first) & (step.entry_filters < first + count)
        per_filter = np.cumsum(np.bincount(step.entry_filters[mine] - first, minlength=count))
        entries = int(per_filter[-1])
        beats = _beats(step, first, count, negative)
        walker = t + 2 + HEADER_WORDS + 3 * count
        free = 0              # when the lanes' output register takes the next word
        for g in range(step.groups):
            newest = min(step.group_rows(g)[1], rows - 1)
            while len(row_ready) <= newest:
                y = len(row_ready)
                # A cycle between rows (the filler computes the next row's place).
                start = issue_end + 2 if y else 1
                # The ring: row y waits until no group in flight reads a row before y - cap + 1.
                for h, oldest in enumerate(group_oldest[:len(group_done)]):
                    if oldest <= y - cap:
                        start = max(start, group_done[h] + 1)
                issue_end = start + row_cost[y] - 1
                row_ready.append(issue_end + ROW_VISIBLE)
            handshake = max(walker, row_ready[newest])
            # A word closes with its filter's last entry; it waits while the scanner still
            # holds the one before (released with its last beat, taken the cycle after), and
            # the walk waits with it.
            stall = 0
            for f in range(count):
                close = handshake + int(per_filter[f]) + stall
                stall += max(free - close, 0)
                free = max(free, close) + int(beats[g, f]) + 1
            walker = handshake + GROUP_CYCLES + entries + stall
            if len(group_done) < step.groups:
                group_done.append(walker - 1 + ISSUE_TO_REQUEST)
        last_request = walker - 1 + ISSUE_TO_REQUEST
        t = last_request + DRAIN + int(beats[-1, -1])
    return t + 1


def _negatives(program, graph, x_int):
    """Per ReLU conv step (by index): its sums below zero, (inputs, filters, output pixels)."""
    from .. import reference
    values = reference.run_layers(graph, x_int)
    found = {}
    for index, step in enumerate(program.steps):
        requant = getattr(step, "requant", None)
        if not isinstance(step, ConvStep) or step.out_flat or requant is None or \
                requant.clamp_min < 0:
            continue
        node = step.node
        inputs = [values[name] for name in node.inputs]
        if step.kind == "conv":
            acc = reference.conv2d_accumulate(inputs[0], node.weight, node.bias,
                                              stride=step.stride, padding=step.padding,
                                              groups=node.groups)
        elif step.kind == "add":
            scale_a, scale_b = node.input_multipliers
            acc = inputs[0] * scale_a + inputs[1] * scale_b
        elif step.kind == "avgpool":
            channels = inputs[0].shape[1]
            acc = reference.conv2d_accumulate(
                inputs[0], np.ones((channels, 1, *step.kernel), np.int64),
                stride=step.stride, groups=channels)
        else:
            acc = reference.linear_accumulate(inputs[0].reshape(len(x_int), -1), node.weight,
                                              node.bias)
        found[index] = acc.reshape(len(x_int), step.filters, -1) < 0
    return found


class Cycles:
    """A program's cycle model for one input: ``steps`` (cycles of each), ``compute`` (setup
    of the first step to the output's last beat, the sequencer's idle cycle included),
    ``free_at`` (cycles from the first step's setup to the input's release), ``load`` (the
    input's beats). ``negatives`` maps a ReLU step's index to its sums below zero (filters x
    output pixels); without them every sum is requantized."""

    def __init__(self, program, negatives=None):
        negatives = negatives or {}
        self.steps = [SETTLE + step_cycles(step, negatives.get(index))
                      for index, step in enumerate(program.steps)]
        outputs = program.output.pixels * program.output.channels
        self.emit = outputs + 1
        self.compute = sum(self.steps) + self.emit + 1
        readers = [i for i, s in enumerate(program.steps) if isinstance(s, ConvStep) and
                   any(src.name == program.input.name for src in s.sources)]
        self.free_at = sum(self.steps[:max(readers, default=0) + 1])
        self.load = program.input.pixels * program.input.channels

    @property
    def interval(self):
        """Steady-state cycles per inference: the input of the next loads while this one runs
        (after its last reader), so whichever is longer."""
        return max(self.compute, self.free_at + self.load + 2 + 1)

    @property
    def latency(self):
        """One inference alone: its input loaded, then the steps and the output."""
        return self.load + 2 + self.compute - 1


def inference_cycles(program, graph=None, x_int=None):
    """(interval, latency) per input of ``x_int``, int64 arrays (see :class:`Cycles`); without
    inputs, one inference whose sums all need requantizing."""
    if x_int is None or not len(x_int):
        cycles = Cycles(program)
        return np.array([cycles.interval]), np.array([cycles.latency])
    negatives = _negatives(program, graph, np.asarray(x_int))
    each = [Cycles(program, {index: value[i] for index, value in negatives.items()})
            for i in range(len(x_int))]
    return (np.array([c.interval for c in each], np.int64),
            np.array([c.latency for c in each], np.int64))
