# amaranth: UnusedElaboratable=no
"""The Requantizer in the Amaranth simulator against zeroskip.reference.requantize.

``ref_requantize`` is the golden model; ``rtl_requantize`` streams the same accumulators through
the simulated unit with random idle input cycles and random output backpressure.
"""

import re

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import signed, unsigned

from zeroskip import ir, reference
from zeroskip.hdl.requant import (DSP_OPERAND_BITS, Requantizer, accumulator_product_width,
                                  saturation_bounds)
from zeroskip.hdl.verilog import convert

from hdl_sim import run_streams

S8 = ir.Activation(bits=8, signed=True, scale=0.1)
U8 = ir.Activation(bits=8, signed=False, scale=0.1)
S4 = ir.Activation(bits=4, signed=True, scale=0.1)
GAPS = {"idle_probability": 0.35, "backpressure_probability": 0.35}


def make_requant(multiplier, shift, clamp_min, clamp_max, epsilon=0, rounding="half_up"):
    return ir.Requant(multiplier=np.asarray(multiplier, dtype=np.int32),
                      shift=np.asarray(shift, dtype=np.int32),
                      clamp_min=clamp_min, clamp_max=clamp_max, epsilon=epsilon,
                      rounding=rounding)


def ref_requantize(requant, acc, channel, channels):
    """Golden output of each (acc, channel) beat: requantize as an (N, channels) batch."""
    out = np.empty(len(acc), dtype=np.int64)
    for c in range(channels):
        picked = channel == c
        batch = np.zeros((int(picked.sum()), channels), dtype=np.int64)
        batch[:, c] = acc[picked]
        out[picked] = reference.requantize(batch, requant)[:, c]
    return out


def rtl_requantize(dut, acc, channel, seed, **gaps):
    beats = [{"acc": int(a), "channel": int(c)} for a, c in zip(acc, channel)]
    run = run_streams(dut, [(dut.i_stream, beats)], [(dut.o_stream, len(beats))], seed=seed,
                      **gaps)
    return np.array(run.received[0], dtype=np.int64)


def random_accumulators(rng, acc_shape, count, channels):
    """Accumulators of every magnitude (log-uniform), both extremes included, random channels."""
    width = acc_shape.width - acc_shape.signed
    acc = np.floor(2.0 ** rng.uniform(0, width, count)).astype(np.int64)
    if acc_shape.signed:
        acc[rng.random(count) < 0.5] *= -1
        acc[:2] = [-(2**width), 2**width - 1]
    else:
        acc[:2] = [0, 2**width - 1]
    return acc, rng.integers(0, channels, count)


def check(requant, acc_shape, channels, out_act, acc, channel, seed=0):
    dut = Requantizer(requant, acc_shape, channels, out_act)
    expected = ref_requantize(requant, acc, channel, channels)
    np.testing.assert_array_equal(rtl_requantize(dut, acc, channel, seed, **GAPS), expected)
    return expected


CASES = {
    # name: (multiplier, shift, clamp_min, clamp_max, epsilon, acc_shape, out_act)
    "per-channel": ([40000, 3, 65535, 0, 12345], [20, 0, 30, 5, 62], -128, 127, 0, signed(24), S8),
    "shared": ([23170], [25], -128, 127, 0, signed(32), S8),
    "per-channel-multiplier": ([100, 2000, 30000], [18], -100, 90, 0, signed(20), S8),
    "per-channel-shift": ([1234], [3, 9, 17, 0], -128, 127, 0, signed(16), S8),
    "relu-epsilon": ([9000, 7000, 5000], [14, 13, 12], 0, 127, 3, signed(20), S8),
    "relu6-unsigned": ([30000, 20000], [21, 20], 0, 96, 2, signed(24), U8),
    "unsigned-acc": ([300, 65535, 1], [10, 17, 2], 0, 255, 0, unsigned(12), U8),
    "narrow-output": ([3, 5, 7], [2, 1, 0], -8, 7, 1, signed(6), S4),
    "one-channel": ([777], [9], -128, 127, 0, signed(18), S8),
}


@pytest.mark.parametrize("rounding", ir.ROUNDING_MODES)
@pytest.mark.parametrize("name", CASES)
def test_random_accumulators(name, rounding):
    multiplier, shift, clamp_min, clamp_max, epsilon, acc_shape, out_act = CASES[name]
    channels = max(len(multiplier), len(shift))
    requant = make_requant(multiplier, shift, clamp_min, clamp_max, epsilon, rounding)
    rng = np.random.default_rng(sum(map(ord, name)))
    acc, channel = random_accumulators(rng, acc_shape, 300, channels)
    expected = check(requant, acc_shape, channels, out_act, acc, channel, seed=len(name))
    assert len(np.unique(expected)) > 2, "the case should not saturate everything"


def test_rounding_ties_round_half_up_for_both_signs():
    shifts = np.arange(1, 9)
    requant = make_requant([1] * len(shifts), shifts, -128, 127)
    rng = np.random.default_rng(1)
    channel = np.repeat(np.arange(len(shifts)), 24)
    quotient = rng.integers(-60, 60, len(channel))
    halfway = (1 << (shifts[channel] - 1))
    # Exact ties, one below and one above, for negative and positive accumulators alike.
    acc = np.concatenate([quotient * (1 << shifts[channel]) + halfway + offset
                          for offset in (0, -1, 1)])
    channel = np.tile(channel, 3)
    expected = check(requant, signed(16), len(shifts), S8, acc, channel)
    ties = slice(0, len(quotient))
    np.testing.assert_array_equal(expected[ties], np.clip(quotient + 1, -128, 127))
    assert (acc[ties] < 0).any() and (acc[ties] > 0).any()


def ties_around(shifts, quotients):
    """Per channel (one per shift): the exact ties ``q + 1/2`` for the given quotients, then one
    below and one above each; returns ``(acc, channel, ties)``."""
    shifts = np.asarray(shifts)
    channel = np.repeat(np.arange(len(shifts)), len(quotients))
    quotient = np.tile(quotients, len(shifts))
    tie = quotient * (1 << shifts[channel]) + (1 << (shifts[channel] - 1))
    acc = np.concatenate([tie + offset for offset in (0, -1, 1)])
    return acc, np.tile(channel, 3), slice(0, len(tie))


@pytest.mark.parametrize("shared_shift", [True, False], ids=["constant shift", "shift ROM"])
@pytest.mark.parametrize("clamp", [(-128, 127), (-7, 7), (-5, 6), (1, 6), (0, 15)])
def test_rounding_ties_round_half_even(clamp, shared_shift):
    """Ties go to the even neighbour for both signs, also next to the clamp bounds (a tie just
    below an odd clamp_min rounds down past it and must be clamped back)."""
    shifts = [5] if shared_shift else [1, 2, 5, 9]
    quotients = np.arange(-12, 12)
    requant = make_requant([1] * len(shifts), shifts, *clamp, rounding="half_even")
    out_act = S8 if clamp[0] < 0 else U8
    acc, channel, ties = ties_around(shifts, quotients)
    expected = check(requant, signed(16), len(shifts), out_act, acc, channel)
    quotient = np.tile(quotients, len(shifts))
    even = quotient + (quotient % 2)  # q + 1/2 -> q if q is even, else q + 1
    np.testing.assert_array_equal(expected[ties], np.clip(even, *clamp))
    assert (expected[ties] != np.clip(quotient + 1, *clamp)).any()


def test_half_even_saturation_bounds():
    """The bound above is strict for half even: a tie just under clamp_max may round down."""
    for multiplier, shift, clamp in ((1, 1, (-8, 7)), (3, 2, (0, 6)), (5, 3, (-128, 127))):
        for rounding in ir.ROUNDING_MODES:
            requant = make_requant([multiplier], [shift], *clamp, rounding=rounding)
            low, high = saturation_bounds(requant, 1)
            values = reference.requantize(np.arange(low - 3, high + 4)[:, None], requant)[:, 0]
            acc = np.arange(low - 3, high + 4)
            assert (values[acc <= low] == clamp[0]).all() and (values[acc >= high] == clamp[1]).all()


def test_known_values():
    """A few hand-computed results, so the golden model is not the only witness."""
    requant = make_requant([1, 3, 1], [1, 2, 0], -128, 127, epsilon=1)
    acc = np.array([5, -5, 3, -3, 2, -2, 1, 0, 300, -300])
    channel = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    # 5/2 -> 3, -5/2 -> -2, 3/2 -> 2, -3/2 -> -1 -> pruned, 6/4 -> 2, -6/4 -> -1 -> pruned,
    # 1 -> pruned (epsilon 1), 0, clamped to 127 and -128.
    expected = [3, -2, 2, 0, 2, 0, 0, 0, 127, -128]
    np.testing.assert_array_equal(check(requant, signed(12), 3, S8, acc, channel), expected)


def test_widest_product_is_exact():
    """acc at both extremes times the largest multiplier, scaled back into range: any bit lost
    in the product shows."""
    width = 30
    requant = make_requant([65535], [width + 16 - 8], -128, 127)
    acc = np.array([-(2 ** (width - 1)), 2 ** (width - 1) - 1, -(2 ** (width - 2)), 12345])
    expected = check(requant, signed(width), 1, S8, acc, np.zeros(4, dtype=np.int64))
    np.testing.assert_array_equal(expected[:2], [-128, 127])


def test_latency_and_throughput():
    """At full rate a beat goes in every cycle and comes out exactly `latency` cycles later."""
    requant = make_requant([3, 5], [1, 2], -128, 127)
    dut = Requantizer(requant, signed(10), 2, S8)
    acc, channel = np.arange(-20, 20), np.arange(40) % 2
    run = run_streams(dut, [(dut.i_stream, [{"acc": int(a), "channel": int(c)}
                                            for a, c in zip(acc, channel)])],
                      [(dut.o_stream, len(acc))], seed=0,
                      record=[dut.i_stream.valid, dut.i_stream.ready, dut.o_stream.valid])
    in_valid, in_ready, out_valid = run.trace.T.astype(bool)
    taken = np.flatnonzero(in_valid & in_ready)
    np.testing.assert_array_equal(taken, taken[0] + np.arange(len(acc)))
    np.testing.assert_array_equal(np.flatnonzero(out_valid), taken + Requantizer.latency)
    np.testing.assert_array_equal(run.received[0], ref_requantize(requant, acc, channel, 2))


# The digits net's first conv (per-channel multipliers of 15 bits, shifts 22 / 23, ReLU to uint8)
# and its classifier (one shift of 25, int8 logits), with accumulators wider than a DSP operand.
SATURATION_CASES = {
    "relu_uint8": (make_requant([17302, 31987, 24001], [22, 23, 22], 0, 255), signed(24), U8),
    "int8_logits": (make_requant([19778, 27583], [25, 25], -128, 127), signed(26), S8),
    "zero_multiplier": (make_requant([0, 20000], [3, 20], -128, 127), signed(22), S8),
}


@pytest.mark.parametrize("name", sorted(SATURATION_CASES))
def test_saturation_bounds_are_exact(name):
    """At and beyond each bound every channel gives its clamp value; one step inside, some
    channel does not (the bounds are the tightest exact ones)."""
    requant, _, _ = SATURATION_CASES[name]
    channels = len(requant.multiplier)
    low, high = saturation_bounds(requant, channels)
    for c in range(channels):
        at = ref_requantize(requant, np.array([low, low - 7, high, high + 7]),
                            np.full(4, c), channels)
        if requant.multiplier[c] != 0:
            assert at.tolist() == [requant.clamp_min] * 2 + [requant.clamp_max] * 2
    inside = np.array([[low + 1, high - 1]] * channels)
    outputs = [ref_requantize(requant, inside[c], np.full(2, c), channels)
               for c in range(channels)]
    assert any(out[0] != requant.clamp_min for out in outputs)
    assert any(out[1] != requant.clamp_max for out in outputs)


@pytest.mark.parametrize("name", sorted(SATURATION_CASES))
def test_saturated_split_product_is_exact(name):
    """Accumulators around the saturation bounds and at the extremes of a wide accumulator: the
    saturated, split multiply gives the golden activations."""
    requant, acc_shape, out_act = SATURATION_CASES[name]
    channels = len(requant.multiplier)
    low, high = saturation_bounds(requant, channels)
    rng = np.random.default_rng(7)
    acc, channel = random_accumulators(rng, acc_shape, 200, channels)
    edges = np.array([low - 1, low, low + 1, high - 1, high, high + 1], dtype=np.int64)
    acc = np.concatenate([acc, np.repeat(edges, channels)])
    channel = np.concatenate([channel, np.tile(np.arange(channels), len(edges))])
    check(requant, acc_shape, channels, out_act, acc, channel, seed=3)


def test_accumulator_product_width():
    assert accumulator_product_width(24, 16) == 40
    worst = -(2**23) * (2**16 - 1)
    assert -(2 ** (40 - 1)) <= worst
    with pytest.raises(ValueError, match="acc_width must be a positive integer"):
        accumulator_product_width(0, 16)
    with pytest.raises(ValueError, match="multiplier_bits"):
        accumulator_product_width(8, True)


def test_signature():
    dut = Requantizer(make_requant([1, 2, 3], [0], -128, 127), signed(20), 3, S8)
    assert set(dut.signature.members) == {"i_stream", "o_stream"}
    payload = dut.i_stream.payload
    assert payload.acc.shape() == signed(20) and payload.channel.shape() == unsigned(2)
    assert dut.o_stream.payload.shape() == signed(8)
    one = Requantizer(make_requant([1], [0], 0, 255), unsigned(9), 1, U8)
    assert one.i_stream.payload.channel.shape() == unsigned(0)


@pytest.mark.parametrize("arguments, error, message", [
    (("not a requant", signed(8), 1, S8), TypeError, "requant must be a zeroskip.ir.Requant"),
    ((make_requant([1], [0], -128, 127), signed(8), 1, "S8"), TypeError, "out_act must be"),
    ((make_requant([1], [0], -128, 127), signed(8), 2.0, S8), TypeError, "channels must be"),
    ((make_requant([1], [0], -128, 127), signed(8), 0, S8), ValueError, "at least 1"),
    ((make_requant([1], [0], -128, 127), "wide", 1, S8), TypeError, "shape"),
    ((make_requant([1], [0], -128, 127), unsigned(0), 1, S8), ValueError, "at least 1 bit"),
    ((make_requant([1, 2, 3], [0], -128, 127), signed(8), 4, S8), ValueError,
     "requant.multiplier.*shape \\(4,\\) or \\(1,\\)"),
    ((make_requant([1], [0], -128, 127), signed(8), 1, U8), ValueError, "clamp_min"),
    ((make_requant([1], [63], 0, 255), signed(8), 1, U8), ValueError, "requant.shift"),
])
def test_constructor_errors(arguments, error, message):
    with pytest.raises(error, match=message):
        Requantizer(*arguments)


def test_converts_to_verilog(monkeypatch):
    monkeypatch.setenv("AMARANTH_USE_YOSYS", "builtin")
    for name in ("per-channel", "shared"):
        multiplier, shift, clamp_min, clamp_max, epsilon, acc_shape, out_act = CASES[name]
        dut = Requantizer(make_requant(multiplier, shift, clamp_min, clamp_max, epsilon),
                          acc_shape, len(multiplier), out_act)
        text = verilog.convert(dut, name="requantizer")
        assert "module requantizer(" in text and "o_stream__payload" in text


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_multiply_fits_one_dsp_block(name):
    """The multiply's accumulator operand is at most DSP_OPERAND_BITS signed bits, whatever the
    accumulator's width, and the multiplier's at most 17 (its 16 bits and a sign): one ECP5
    MULT18X18D (18 x 18) holds it with its registers, where a wider operand keeps the fabric's."""
    multiplier, shift, clamp_min, clamp_max, epsilon, acc_shape, out_act = CASES[name]
    dut = Requantizer(make_requant(multiplier, shift, clamp_min, clamp_max, epsilon),
                      acc_shape, max(len(multiplier), len(shift)), out_act)
    text = convert(dut, name="requantizer")
    widths = re.findall(r"\.A_WIDTH\(32'd(\d+)\),\s*\.B_WIDTH\(32'd(\d+)\)", text)
    assert len(widths) == 1, widths
    a_width, b_width = map(int, widths[0])
    assert a_width <= min(acc_shape.width + (not acc_shape.signed), DSP_OPERAND_BITS + 1)
    assert b_width == max(int(np.max(multiplier)).bit_length(), 1) + 1
