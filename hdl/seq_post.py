"""After the lanes: the scanner, and the requantizer whose parameters change per filter.

The **scanner** walks a closed word a memory word at a time: lanes ``2s - odd`` and
``2s + 1 - odd`` fill slot ``s`` (one 16-bit word of the target; ``odd`` when the word's first
pixel is odd), which the lanes lay out as positions ``2s`` and ``2s + 1``. A lane whose sum
needs requantizing makes a *beat*; in a layer with a ReLU (clamp at or above 0) a negative sum
needs none (the lanes mark which): its output is the step's ``skip_value``, known without a
multiply. A slot costs ``max(1, lanes requantized)`` beats, one a cycle; the word is
released with its last beat.

The **requantizer** computes :func:`zeroskip.reference.requantize` on each beat with its filter's
multiplier and shift (read from the parameter cache a cycle after the beat) and the step's
bounds, exactly as :class:`zeroskip.hdl.requant.Requantizer` does: saturation to the bounds
beyond which every channel clamps, the multiply on one DSP with the few low bits added as
shifted multipliers, ``((2 * product) >> shift) + 1 >> 1``, clamp, prune. A beat that carries a
constant passes through. Fixed latency (:data:`REQUANT_LATENCY`), never stalls.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .requant import DSP_OPERAND_BITS
from .seq_entries import param_write_layout
from .seq_lanes import word_layout
from .seq_memory import ram
from .seq_plan import BANKS, ConvStep
from .sparse_plan import signed_width

__all__ = ["REQUANT_LATENCY", "Requant", "Scanner", "beat_layout", "post_layout",
           "post_settings", "requant_widths", "result_layout"]

REQUANT_LATENCY = 7


def post_layout(w):
    """Settings of one step for the scanner and the requantizer."""
    return data.StructLayout({
        "skip": 1, "skip_value": unsigned(8), "flat_out": 1, "requant": 1, "flip": 1,
        "low": signed(w.acc_bits), "high": signed(w.acc_bits),
        "clamp_low": signed(11), "clamp_high": signed(11),    # 2*min - 1 and 2*max
        "clamp_min": signed(9), "clamp_max": signed(9), "epsilon": unsigned(9),
    })


def post_settings(step):
    """The :func:`post_layout` values of a step (a max pool passes its values through)."""
    requant = getattr(step, "requant", None)
    if requant is None:
        # A max pool: its largest values pass, offset back by 128 when signed.
        return {"skip": 0, "skip_value": 0, "flat_out": 0, "requant": 0,
                "flip": step.source.act.signed, "low": 0, "high": 0,
                "clamp_low": 0, "clamp_high": 0, "clamp_min": 0, "clamp_max": 0,
                "epsilon": 0}
    low, high = step_bounds(step)
    skip_value = requant.clamp_min if requant.clamp_min > requant.epsilon else 0
    return {"skip": isinstance(step, ConvStep) and requant.clamp_min >= 0,
            "skip_value": skip_value & 0xFF,
            "flat_out": isinstance(step, ConvStep) and step.out_flat, "requant": 1, "flip": 0,
            "low": low, "high": high,
            "clamp_low": 2 * requant.clamp_min - 1, "clamp_high": 2 * requant.clamp_max,
            "clamp_min": requant.clamp_min, "clamp_max": requant.clamp_max,
            "epsilon": min(requant.epsilon, 255)}


def step_bounds(step):
    """The step's saturation bounds, within its accumulator's range."""
    from .requant import saturation_bounds
    low, high = saturation_bounds(step.requant, step.filters)
    acc_low, acc_high = step.accumulator_bounds
    return max(low, acc_low - 1), min(high, acc_high + 1)


def requant_widths(program):
    """(saturated-sum bits, product bits kept after the shift, smallest and largest shift)."""
    sat, kept, shifts = 2, 2, []
    for step in program.steps:
        if getattr(step, "requant", None) is None:
            continue
        low, high = step_bounds(step)
        sat = max(sat, signed_width(low, high))
        for multiplier, shift in zip(step.multiplier.tolist(), step.shift.tolist()):
            shifts.append(int(shift))
            for bound in (low, high):
                kept = max(kept, signed_width(0, abs(2 * bound * int(multiplier)) >> int(shift))
                           + 1)
    return sat, kept, min(shifts, default=0), max(shifts, default=0)


def beat_layout(w):
    """One byte (or a slot's two) on its way to the writer."""
    return data.StructLayout({
        "valid": 1, "requant": 1, "acc": signed(w.acc_bits), "const": unsigned(8),
        "byte": 1, "both": 1, "other_skip": 1, "write": 1, "mask": unsigned(2),
        "word_end": 1, "count": unsigned(4), "filter": unsigned(w.cache_bits),
    })


def result_layout(w):
    """A beat once requantized: its byte (``value``) and how the writer places it."""
    return data.StructLayout({
        "valid": 1, "value": unsigned(8), "byte": 1, "both": 1, "other_skip": 1, "write": 1,
        "mask": unsigned(2), "word_end": 1, "count": unsigned(4),
    })


class Scanner(wiring.Component):
    """Closed words to beats, a slot at a time.

    Members
    -------
    settings : In(post_layout(w))
    i_stream : In(stream.Signature(word_layout(w)))
        Released (``ready``) with the word's last beat.
    beats : Out(beat_layout(w))
        One beat a cycle at most; nothing holds them back.
    """

    def __init__(self, w):
        self.w = w
        super().__init__({"settings": In(post_layout(w)),
                          "i_stream": In(stream.Signature(word_layout(w))),
                          "beats": Out(beat_layout(w))})

    def elaborate(self, platform):
        m = Module()
        w, cfg = self.w, self.settings
        word = self.i_stream.payload
        slot = Signal(3)
        second = Signal()            # the high byte of a slot whose two lanes both requantize
        # The slot's two positions (the word is laid out by slots: :func:`word_layout`).
        valid0, valid1, wants0, wants1 = Signal(), Signal(), Signal(), Signal()
        acc0, acc1 = Signal(signed(w.acc_bits)), Signal(signed(w.acc_bits))
        with m.Switch(slot):
            for s in range((BANKS + 2) // 2):
                with m.Case(s):
                    m.d.comb += [valid0.eq(word.valid[2 * s]), wants0.eq(word.pending[2 * s]),
                                 acc0.eq(word.acc[2 * s])]
                    if 2 * s + 1 <= BANKS:
                        m.d.comb += [valid1.eq(word.valid[2 * s + 1]),
                                     wants1.eq(word.pending[2 * s + 1]),
                                     acc1.eq(word.acc[2 * s + 1])]
        both_requant = wants0 & wants1
        # One sum a beat: the high lane's when it alone requantizes or on a slot's second beat.
        high = Mux(both_requant, second, ~wants0)
        chosen = Mux(high, acc1, acc0)
        beat = self.beats
        last_beat = (slot == word.last_slot) & (~both_requant | second)
        m.d.sync += beat.valid.eq(0)
        with m.If(self.i_stream.valid):
            # A max pool's bytes pass as constants (offset back by 128 when signed).
            m.d.sync += [beat.valid.eq(1), beat.filter.eq(word.filter),
                         beat.word_end.eq(last_beat), beat.count.eq(word.count),
                         beat.acc.eq(chosen), beat.requant.eq(cfg.requant & (wants0 | wants1)),
                         beat.const.eq(Mux(wants0 | wants1, chosen[:8] ^ (cfg.flip << 7),
                                           cfg.skip_value)),
                         beat.byte.eq(high), beat.both.eq(~wants0 & ~wants1),
                         beat.other_skip.eq(~both_requant & Mux(wants0, valid1, valid0)),
                         beat.write.eq(~both_requant | second),
                         beat.mask.eq(Mux(second, 0b11, valid1 << 1 | valid0))]
            with m.If(both_requant):
                m.d.sync += second.eq(~second)
            with m.If(~both_requant | second):
                m.d.sync += slot.eq(Mux(last_beat, 0, slot + 1))
        m.d.comb += self.i_stream.ready.eq(last_beat)
        return m


class Requant(wiring.Component):
    """Beats to bytes: requantized with their filter's parameters, or passed through.

    Parameters
    ----------
    w : Widths
    widths : (sat_bits, kept_bits, shift_min, shift_max), from :func:`requant_widths`.
    low_dsp : bool
        The saturated sum's bits below a DSP's operand multiply in a second DSP rather than
        as shifted multipliers summed in logic (where the part has a DSP to spare).

    Members
    -------
    settings : In(post_layout(w))
    beats : In(beat_layout(w))
    params : In(stream.Signature(param_write_layout(w)))
        Writes of the multiplier and shift cache (taken every cycle).
    results : Out(result_layout(w))
        :data:`REQUANT_LATENCY` cycles after the beat.
    idle : Out(1)
        No beat in flight.
    """

    def __init__(self, w, widths, *, low_dsp=False):
        self.w, self.low_dsp = w, low_dsp
        self.sat_bits, self.kept_bits, self.shift_min, self.shift_max = widths
        super().__init__({"settings": In(post_layout(w)), "beats": In(beat_layout(w)),
                          "params": In(stream.Signature(param_write_layout(w))),
                          "results": Out(result_layout(w)), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        w, cfg, beat = self.w, self.settings, self.beats
        m.submodules.scales = scales = ram(
            data.StructLayout({"multiplier": unsigned(16), "shift": unsigned(5)}),
            1 << w.cache_bits)
        scale_write, scale_read = scales.write_port(), scales.read_port()
        m.d.comb += [scale_write.addr.eq(self.params.payload.index),
                     scale_write.data.multiplier.eq(self.params.payload.multiplier),
                     scale_write.data.shift.eq(self.params.payload.shift),
                     scale_write.en.eq(self.params.valid), self.params.ready.eq(1),
                     scale_read.addr.eq(beat.filter)]

        flags = data.StructLayout({"valid": 1, "requant": 1, "const": unsigned(8), "byte": 1,
                                   "both": 1, "other_skip": 1, "write": 1,
                                   "mask": unsigned(2), "word_end": 1, "count": unsigned(4)})
        # The beat's other fields wait beside the arithmetic in a small RAM (a delay line: each
        # cycle written at one address and read REQUANT_LATENCY - 2 addresses back).
        entering = Signal(flags)
        m.d.comb += [getattr(entering, name).eq(getattr(beat, name)) for name, _ in flags]
        m.submodules.delay = delay = ram(flags, 8)
        delay_write, delay_read = delay.write_port(), delay.read_port()
        position = Signal(3)
        m.d.sync += position.eq(position + 1)
        m.d.comb += [delay_write.addr.eq(position), delay_write.data.eq(entering),
                     delay_write.en.eq(1),
                     delay_read.addr.eq(position - (REQUANT_LATENCY - 2))]
        # Which stages hold a beat (for idle).
        in_flight = Signal(REQUANT_LATENCY)
        m.d.sync += in_flight.eq(Cat(beat.valid, in_flight[:-1]))

        # 1: comparisons with the saturation bounds. 2: saturated, beside the scale.
        acc1 = Signal(signed(w.acc_bits))
        above, below = Signal(), Signal()
        m.d.sync += [acc1.eq(beat.acc), above.eq(beat.acc > cfg.high),
                     below.eq(beat.acc < cfg.low)]
        sat = Signal(signed(self.sat_bits))
        multiplier, shift2 = Signal(16), Signal(5)
        m.d.sync += [sat.eq(Mux(below, cfg.low, Mux(above, cfg.high, acc1))),
                     multiplier.eq(scale_read.data.multiplier),
                     shift2.eq(scale_read.data.shift)]
        # 3: the multiply (one DSP) beside the low bits' shifted multipliers. 4: the product.
        low_bits = max(self.sat_bits - DSP_OPERAND_BITS, 0)
        # Reset-less: plain registers, which Yosys packs into the DSPs' output registers.
        high = Signal(signed(self.sat_bits - low_bits + 16), reset_less=True)
        low = Signal(max(16 + low_bits, 1), reset_less=True)
        shift3, shift4 = Signal(5), Signal(5)
        if self.low_dsp and low_bits:
            low_product = sat[:low_bits] * multiplier
        else:
            low_product = sum((Mux(sat[bit], multiplier << bit, 0) for bit in range(low_bits)),
                              start=0)
        m.d.sync += [high.eq((sat >> low_bits) * multiplier), low.eq(low_product),
                     shift3.eq(shift2)]
        product = Signal(signed(self.sat_bits + 17))
        m.d.sync += [product.eq((high << low_bits) + low), shift4.eq(shift3)]
        # 5: twice the quotient, floor((2 * product) >> shift), on the bits that matter.
        twice = Signal(signed(self.kept_bits + 1))
        with m.Switch(shift4):
            for amount in range(self.shift_min, self.shift_max + 1):
                with m.Case(amount):
                    m.d.sync += twice.eq((product << 1) >> amount)
        # 6: rounded, and the clamp's comparisons on the value before rounding. 7: the byte.
        rounded = Signal(signed(self.kept_bits))
        under, over = Signal(), Signal()
        m.d.sync += [rounded.eq((twice + 1) >> 1), under.eq(twice < cfg.clamp_low),
                     over.eq(twice > cfg.clamp_high)]
        clamped = Signal(signed(9))
        m.d.comb += clamped.eq(Mux(under, cfg.clamp_min, Mux(over, cfg.clamp_max, rounded)))
        pruned = Mux((clamped <= cfg.epsilon) & (clamped >= -cfg.epsilon), 0, clamped)
        last = Signal(flags)
        m.d.comb += last.eq(delay_read.data)
        out = self.results
        m.d.comb += self.idle.eq(~beat.valid & ~in_flight.any())
        m.d.sync += [out.valid.eq(last.valid), out.byte.eq(last.byte), out.both.eq(last.both),
                     out.other_skip.eq(last.other_skip), out.write.eq(last.write),
                     out.mask.eq(last.mask), out.word_end.eq(last.word_end),
                     out.count.eq(last.count),
                     out.value.eq(Mux(last.requant, pruned[:8], last.const))]
        return m
