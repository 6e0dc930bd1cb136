"""Requantization in hardware: one accumulator in, one activation out, exactly as
:func:`zeroskip.reference.requantize`.

For channel ``c`` (see :class:`zeroskip.ir.Requant`)::

    y = (acc * multiplier[c] + 2**(shift[c] - 1)) >> shift[c]    # or acc * multiplier[c] if 0
    y = min(max(y, clamp_min), clamp_max)
    y = 0 if abs(y) <= epsilon

The rounding offset ``2**(s - 1)`` would need an adder as wide as the largest shift; the
pipeline uses the equivalent ``((2 * v) >> s) + 1) >> 1`` instead (for integers, a floor of a
floor is one floor), which also covers ``s == 0`` without a special case: ``(2v + 1) >> 1 == v``.

With ``requant.rounding == "half_even"`` a tie (``t`` odd and the product's ``s - 1`` bits below
those ``t`` holds all zero) whose ``t >> 1`` is even is rounded down, ``t >> 1``, instead of up.

The result is monotone in ``acc`` and clamped, so every accumulator beyond the one that first
reaches a clamp bound (in every channel) gives the same activation: the accumulator is saturated
to those bounds first (:func:`saturation_bounds`), exactly, which narrows the multiplier. Its
accumulator side is then split so that the multiply takes at most :data:`DSP_OPERAND_BITS`
signed bits (one iCE40 SB_MAC16; an ECP5 MULT18X18D takes 18); the few bits below are added
as shifted multipliers.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zeroskip import ir
from zeroskip.errors import GraphError

from .common import activation_stream
from .dsp import RegisteredProduct
from .sparse_plan import signed_width

__all__ = ["DSP_OPERAND_BITS", "Requantizer", "SideBySide", "accumulator_product_width",
           "requant_slice", "saturation_bounds", "wide_requantizer"]

DSP_OPERAND_BITS = 16


def saturation_bounds(requant, channels):
    """``(low, high)``: every accumulator at or below ``low`` requantizes to ``clamp_min``, every
    one at or above ``high`` to ``clamp_max``, in every channel (a channel whose multiplier is 0
    gives 0 whatever its accumulator)."""
    multipliers = np.broadcast_to(np.asarray(requant.multiplier, dtype=object), (channels,))
    shifts = np.broadcast_to(np.asarray(requant.shift, dtype=object), (channels,))
    lows, highs = [], []
    for multiplier, shift in zip(multipliers.tolist(), shifts.tolist()):
        if multiplier == 0:
            continue
        if requant.rounding == "half_even":
            # A tie at T - 1/2 may round down: a M / 2**s > T - 1/2 strictly.
            highs.append(((2 * requant.clamp_max - 1) << shift) // (2 * multiplier) + 1)
        else:
            # ((2 a M) >> s + 1) >> 1 >= T  <=>  a >= ceil((2T - 1) 2**s / 2M)
            highs.append(-((-(2 * requant.clamp_max - 1) << shift) // (2 * multiplier)))
        # Both modes: a M / 2**s < B + 1/2 strictly.
        # ((2 a M) >> s + 1) >> 1 <= B  <=>  a <= ceil((2B + 1) 2**s / 2M) - 1
        lows.append(-((-(2 * requant.clamp_min + 1) << shift) // (2 * multiplier)) - 1)
    if not highs:
        return 0, 0
    return min(lows), max(highs)


def accumulator_product_width(acc_width, multiplier_bits):
    """Bits of ``acc * multiplier`` for an ``acc_width``-bit accumulator (signed or unsigned) and
    an unsigned ``multiplier_bits``-bit multiplier: the product keeps the accumulator's
    signedness and never needs more than the sum of the widths."""
    for name, value in (("acc_width", acc_width), ("multiplier_bits", multiplier_bits)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return acc_width + multiplier_bits


def _shared_value(values):
    """The single value of a per-channel parameter that is the same for all channels, else None."""
    distinct = {int(value) for value in values}
    return distinct.pop() if len(distinct) == 1 else None


def _shape_range(shape):
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


class Requantizer(wiring.Component):
    """Pipelined requantizer: accumulator and channel index in, activation out.

    The building block every engine places after its accumulators (conv2d, linear, average pool,
    add). Per-channel multipliers and shifts live in a ROM (:class:`amaranth.lib.memory.Memory`)
    addressed by the channel; a parameter that is the same for every channel is a constant, so a
    shared shift costs no shifter at all.

    Parameters
    ----------
    requant : zeroskip.ir.Requant
        Multipliers, shifts, clamp bounds and pruning threshold, one entry per channel or one
        shared entry.
    acc_shape : shape-like
        Shape of the accumulator, signed or unsigned; the datapath widens itself to hold
        ``acc * multiplier`` exactly (:func:`accumulator_product_width`).
    channels : int
        Number of channels the ``channel`` index selects from.
    out_act : zeroskip.ir.Activation
        Encoding of the output; ``requant``'s clamp bounds must lie inside its range.

    Members
    -------
    i_stream : ``In(stream.Signature(StructLayout({"acc": acc_shape, "channel": unsigned(n)})))``
        One accumulator and its channel per beat, ``n = ceil_log2(channels)``; ``channel`` must
        be below ``channels``.
    o_stream : ``Out(stream.Signature(activation_shape(out_act)))``
        The requantized activations, in input order.

    Latency and throughput
    ----------------------
    :attr:`latency` (9) cycles from the handshake of an input beat to its result on ``o_stream``
    while ``o_stream.ready`` is high: comparison with the saturation bounds, saturation beside
    the ROM read, the multiply's operands at the DSP, multiply, its product away from the DSP,
    sum of the product's parts, shift, round, clamp/prune. One beat per cycle. The pipeline
    stalls as a whole on a register, ``i_stream.ready``, set for a cycle when the two-beat output
    buffer (``o_stream``'s register and a skid register) will have room in it; so neither
    ``ready`` depends combinationally on the other side.
    """

    latency = 9
    #: The most beats it holds: one a stage, and one in the skid register.
    beats_held = latency + 1

    def __init__(self, requant: ir.Requant, acc_shape, channels: int, out_act: ir.Activation):
        if not isinstance(requant, ir.Requant):
            raise TypeError(f"requant must be a zeroskip.ir.Requant, got {type(requant).__name__}")
        if not isinstance(out_act, ir.Activation):
            raise TypeError(f"out_act must be a zeroskip.ir.Activation, got "
                            f"{type(out_act).__name__}")
        if not isinstance(channels, int) or isinstance(channels, bool):
            raise TypeError(f"channels must be an integer, got {channels!r}")
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        acc_shape = Shape.cast(acc_shape)
        if acc_shape.width < 1:
            raise ValueError(f"acc_shape must be at least 1 bit wide, got {acc_shape!r}")
        try:
            requant.validate(None, channels, out_act)
        except GraphError as error:
            raise ValueError(f"requant does not fit {channels} channel(s) and the output "
                             f"encoding {out_act}: {error}") from None
        self._requant = requant
        self._acc_shape = acc_shape
        self._channels = channels
        payload = data.StructLayout({"acc": acc_shape, "channel": unsigned(ceil_log2(channels))})
        super().__init__({
            "i_stream": In(stream.Signature(payload)),
            "o_stream": Out(activation_stream(out_act)),
        })

    def _channel_parameters(self, m, advance, channel):
        """``(multiplier, shift)`` valid in stage 1b: Python ints when shared by all channels,
        else fields of a ROM read port addressed by ``channel`` (registered in stage 1). A
        per-channel shift is its excess over the smallest (:attr:`_shift_base`)."""
        requant = self._requant
        parameters = {"multiplier": requant.multiplier,
                      "shift": np.asarray(requant.shift) - self._shift_base}
        shared = {name: _shared_value(values) for name, values in parameters.items()}
        per_channel = {name: values for name, values in parameters.items()
                       if shared[name] is None}
        if not per_channel:
            return shared["multiplier"], shared["shift"]
        layout = data.StructLayout({name: unsigned(max(int(values.max()).bit_length(), 1))
                                    for name, values in per_channel.items()})
        m.submodules.parameters = rom = Memory(
            shape=layout, depth=self._channels,
            init=[{name: int(values[channel]) for name, values in per_channel.items()}
                  for channel in range(self._channels)])
        port = rom.read_port()
        m.d.comb += [port.addr.eq(channel), port.en.eq(advance)]
        return tuple(shared[name] if shared[name] is not None else getattr(port.data, name)
                     for name in parameters)

    @property
    def _shift_base(self):
        """The smallest shift: the shift every channel has is wiring, so the shifter moves the
        product only by the excess (a few places, not all a shift's bits can say) and what
        follows it is as narrow as the quotient."""
        return int(np.min(self._requant.shift))

    def _saturation(self, incoming):
        """``(comparisons, saturated, acc)``: the stage-1 comparisons of the incoming
        accumulator with the saturation bounds, ``incoming`` saturated by their results, and
        the stage-1b register that holds it."""
        shape_low, shape_high = _shape_range(self._acc_shape)
        low, high = saturation_bounds(self._requant, self._channels)
        low, high = max(low, shape_low), min(high, shape_high)
        # Only the comparisons that can fail: a constant one is a lint warning.
        comparisons, saturated = [], incoming
        if high < shape_high:
            above = Signal()
            comparisons.append(above.eq(self.i_stream.p.acc > high))
            saturated = Mux(above, high, saturated)
        if low > shape_low:
            below = Signal()
            comparisons.append(below.eq(self.i_stream.p.acc < low))
            saturated = Mux(below, low, saturated)
        acc = Signal(signed(signed_width(low, high)) if comparisons else self._acc_shape)
        return comparisons, saturated, acc

    def elaborate(self, platform):
        m = Module()
        requant = self._requant

        # The pipeline moves as a whole on a register, set a cycle ahead: its enables reach
        # registers by the DSP block and by the parameters' block RAM as well as the output, and
        # computed from the output's ready they were a depthwise conv's longest path on the
        # ECP5-85F (13.6 ns, 12.6 of it route).
        advance = Signal(init=1)
        m.d.comb += self.i_stream.ready.eq(advance)

        # Stage 1: the accumulator and its comparisons with the saturation bounds. Stage 1b: the
        # accumulator saturated, beside its channel's multiplier and shift. Apart, because the
        # comparisons' carry chains followed by the saturation's wide fan-out were an iCE40's
        # longest path.
        incoming = Signal(self._acc_shape)
        channel = Signal.like(self.i_stream.p.channel)
        multiplier, shift = self._channel_parameters(m, advance, channel)
        comparisons, saturated, acc = self._saturation(incoming)
        valid_1, valid_1b = Signal(), Signal()

        # Stage 2a: the multiply's operands in registers of their own, beside them the
        # accumulator's bits below the DSP's operand. Stage 2: the multiply, beside it those
        # bits' shifted multipliers summed. Stage 2c: its product in a second register. DSP
        # blocks sit in a few rows, and the route from the saturation's register or the ROM to
        # one, the multiply and the route back to the product's register in one cycle were
        # ResNet-8's longest path on the ECP5-85F (13.0 ns). With a register on each side the
        # routes take cycles of their own, and the DSP's output is not followed by an adder in
        # the same cycle.
        multiplier_bits = max(int(requant.multiplier.max()).bit_length(), 1)
        acc_shape = acc.shape()
        product_shape = Shape(accumulator_product_width(acc_shape.width, multiplier_bits),
                              acc_shape.signed)
        low_bits = max(acc_shape.width - DSP_OPERAND_BITS, 0)
        # The multiply's registers are its own (a DSP block's, on the ECP5: :mod:`.dsp`). Its
        # operand is the accumulator's high bits alone (``acc >> low_bits`` keeps the width: a
        # 19-bit operand left a ResNet-8 requantizer's multiply on the fabric registers).
        high_acc = acc.shift_right(low_bits)
        at_dsp = RegisteredProduct.of(m, high_acc, multiplier, en=advance)
        high_product = Signal((high_acc * multiplier).shape())
        # The multiplier in a register of its own for the bits below (stage 2a), and those
        # summed from registers: from the ROM's output (5.6 ns) it was a depthwise conv's
        # longest path on the ECP5-85F.
        multiplier_at_dsp = (multiplier if isinstance(multiplier, int) or not low_bits
                             else Signal.like(multiplier, name="multiplier_low"))
        acc_low = Signal(max(low_bits, 1))
        low_sum_value = sum((Mux(acc_low[bit], multiplier_at_dsp << bit, 0)
                             for bit in range(low_bits)), start=0)
        low_sums = [Signal(max(multiplier_bits + low_bits, 1), name=f"low_sum_{stage}")
                    for stage in ("2", "2c")]
        low_sum = low_sums[-1]
        valid_2a, valid_2, valid_2c = Signal(), Signal(), Signal()

        # Stage 2b: the exact product.
        product = Signal(product_shape)
        exact_product = (high_product << low_bits) + low_sum
        valid_2b = Signal()
        base = self._shift_base
        if isinstance(shift, int):
            shift_2 = base + shift
        else:
            shifts = [Signal.like(shift, name=f"shift_{stage}")
                      for stage in ("2a", "2", "2c", "2b")]
            shift_2 = shifts[-1]
            with m.If(advance):
                m.d.sync += [later.eq(earlier) for earlier, later in zip([shift, *shifts], shifts)]

        # Stage 3: floor(2 * product / 2**shift); a constant shift is wiring only, and so is the
        # part of a per-channel one that every channel has.
        twice_quotient_value = (product.shift_left(1).shift_right(shift_2)
                                if isinstance(shift_2, int) else
                                product.shift_left(1).shift_right(base) >> shift_2)
        twice_quotient = Signal(twice_quotient_value.shape())
        valid_3 = Signal()
        half_even = requant.rounding == "half_even"
        # Half even: whether the product's bits below the half bit are all zero.
        exact_below_half = Signal()
        if half_even:
            below_half = Signal(product_shape.width)
            m.d.comb += below_half.eq((((1 << shift_2) >> 1) - 1) if isinstance(shift_2, int)
                                      else ((Const(1 << base) << shift_2) >> 1) - 1)
            exact_below_half_value = (product.as_unsigned() & below_half) == 0

        # Stage 4: round half up, and beside it the clamp's comparisons, made on the value before
        # rounding (for an integer t, ``(t + 1) >> 1 < m`` iff ``t < 2m - 1`` and ``> M`` iff
        # ``t > 2M``). Stage 5 (the output register): clamp, prune. A carry chain followed by
        # another was an iCE40's longest path.
        if half_even:
            # A tie whose lower neighbour t >> 1 is even rounds down.
            down = Signal()
            m.d.comb += down.eq(twice_quotient[0] & exact_below_half & ~twice_quotient[1])
            rounded_value = (twice_quotient + ~down).shift_right(1)
        else:
            rounded_value = (twice_quotient + 1).shift_right(1)
        rounded = Signal(rounded_value.shape())
        under, over = Signal(), Signal()
        valid_4 = Signal()
        clamped = Signal(self.o_stream.payload.shape())
        m.d.comb += clamped.eq(rounded)
        # Only the comparisons the value's range can fail: a constant one is a lint warning.
        comparisons_4 = [over.eq(twice_quotient > 2 * requant.clamp_max)]
        if rounded.shape().signed or requant.clamp_min > 0:
            under_value = twice_quotient < 2 * requant.clamp_min - 1
            if half_even:
                # 2 clamp_min - 1 is a tie rounding down to clamp_min - 1 when that is even.
                under_value |= (twice_quotient == 2 * requant.clamp_min - 1) & down
            comparisons_4.append(under.eq(under_value))
        with m.If(under):
            m.d.comb += clamped.eq(requant.clamp_min)
        with m.Elif(over):
            m.d.comb += clamped.eq(requant.clamp_max)
        result = clamped
        if requant.epsilon > 0:
            small = clamped <= requant.epsilon
            if clamped.shape().signed:
                small &= clamped >= -requant.epsilon
            result = Mux(small, 0, clamped)

        with m.If(advance):
            m.d.sync += [
                valid_1.eq(self.i_stream.valid),
                incoming.eq(self.i_stream.p.acc), channel.eq(self.i_stream.p.channel),
                *comparisons,
                valid_1b.eq(valid_1),
                acc.eq(saturated),
                valid_2a.eq(valid_1b),
                *([acc_low.eq(acc[:low_bits])] if low_bits else []),
                *([multiplier_at_dsp.eq(multiplier)] if multiplier_at_dsp is not multiplier
                  else []),
                valid_2.eq(valid_2a),
                low_sums[0].eq(low_sum_value),
                valid_2c.eq(valid_2),
                high_product.eq(at_dsp),
                low_sums[1].eq(low_sums[0]),
                valid_2b.eq(valid_2c),
                product.eq(exact_product),
                valid_3.eq(valid_2b),
                twice_quotient.eq(twice_quotient_value),
                *([exact_below_half.eq(exact_below_half_value)] if half_even else []),
                valid_4.eq(valid_3),
                rounded.eq(rounded_value), *comparisons_4,
            ]
        self._output_buffer(m, advance, valid_4, result)
        return m

    def _output_buffer(self, m, advance, valid, result):
        """Stage 5: ``o_stream``'s register and a skid register behind it. A result goes to the
        output register when that is free, else to the skid register, which empties into the
        output register as that frees. ``advance`` is set for the next cycle unless the skid
        register will be full: a result always has a place, and while the skid register is full
        none comes."""
        skid = Signal.like(self.o_stream.payload)
        skid_valid = Signal()
        push = Signal()
        free = ~self.o_stream.valid | self.o_stream.ready
        m.d.comb += push.eq(advance & valid)
        with m.If(free):
            with m.If(skid_valid):
                m.d.sync += [self.o_stream.payload.eq(skid), self.o_stream.valid.eq(1),
                             skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o_stream.payload.eq(result), self.o_stream.valid.eq(push)]
        with m.Elif(push):
            m.d.sync += [skid.eq(result), skid_valid.eq(1)]
        m.d.sync += advance.eq(free | ~(skid_valid | push))


def requant_slice(requant, start, step):
    """The :class:`zeroskip.ir.Requant` of channels ``start, start + step, ...``."""
    def part(values):
        return values if len(values) == 1 else values[start::step]
    return ir.Requant(part(requant.multiplier), part(requant.shift), requant.clamp_min,
                      requant.clamp_max, requant.epsilon)


class SideBySide(wiring.Component):
    """Several requantizers (or thresholders) moving in lockstep: one beat of ``width``
    accumulators in, ``width`` activations out.

    Element ``j`` of a beat whose channel index is ``t`` is channel ``t * width + j``: unit
    ``j`` holds the parameters of channels ``j, j + width, ...`` (:func:`requant_slice`), so
    every unit is addressed by ``t``. The units see the same handshakes, so they hold the same
    state: the first one's ``ready`` and ``valid`` are every one's.

    Parameters
    ----------
    units : sequence of wiring.Component
        Each with ``i_stream`` (payload ``acc`` and ``channel``) and ``o_stream``, all alike
        but for their parameters.

    Members
    -------
    i_stream : In(stream.Signature(StructLayout({"acc": ArrayLayout(acc, width),
                                                 "channel": channel})))
    o_stream : Out(stream.Signature(ArrayLayout(output, width)))

    Latency and throughput: the units'.
    """

    def __init__(self, units):
        self.units = tuple(units)
        first = self.units[0].signature.members
        acc = first["i_stream"].signature.members["payload"].shape
        payload = data.StructLayout({"acc": data.ArrayLayout(acc["acc"].shape, len(self.units)),
                                     "channel": acc["channel"].shape})
        out = data.ArrayLayout(first["o_stream"].signature.members["payload"].shape,
                               len(self.units))
        super().__init__({"i_stream": In(stream.Signature(payload)),
                          "o_stream": Out(stream.Signature(out))})

    def elaborate(self, platform):
        m = Module()
        for index, unit in enumerate(self.units):
            m.submodules[f"unit_{index}"] = unit
            m.d.comb += [unit.i_stream.valid.eq(self.i_stream.valid),
                         unit.i_stream.p.acc.eq(self.i_stream.p.acc[index]),
                         unit.i_stream.p.channel.eq(self.i_stream.p.channel),
                         unit.o_stream.ready.eq(self.o_stream.ready),
                         self.o_stream.payload[index].eq(unit.o_stream.payload)]
        m.d.comb += [self.i_stream.ready.eq(self.units[0].i_stream.ready),
                     self.o_stream.valid.eq(self.units[0].o_stream.valid)]
        return m


def wide_requantizer(requant, acc_shape, channels, out_act, width):
    """A :class:`Requantizer` of ``channels`` for a width of 1, else a :class:`SideBySide` of
    ``width`` of them, each of ``channels // width`` channels."""
    if width == 1:
        return Requantizer(requant, acc_shape, channels, out_act)
    return SideBySide(Requantizer(requant_slice(requant, index, width), acc_shape,
                                  channels // width, out_act) for index in range(width))
