# amaranth: UnusedElaboratable=no
"""The pool engines in the Amaranth simulator against zeroskip.reference.

``ref_*`` are the golden model; ``rtl_*`` stream the same batch, inference after inference,
through the simulated engine with random idle input cycles and random output backpressure.
"""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import signed, unsigned

from zeroskip import ir, reference
from zeroskip.hdl.common import batch_from_beats, batch_to_beats, from_wide, to_wide
from zeroskip.hdl.pool import AvgPool2dEngine, MaxPool2dEngine

from hdl_sim import activity_from_trace, run_streams

S8 = ir.Activation(bits=8, signed=True, scale=0.1)
U8 = ir.Activation(bits=8, signed=False, scale=0.1)
U4 = ir.Activation(bits=4, signed=False, scale=0.1)
S3 = ir.Activation(bits=3, signed=True, scale=0.1)
GAPS = {"idle_probability": 0.35, "backpressure_probability": 0.35}
INFERENCES = 2


def maxpool(kernel, stride, padding=(0, 0)):
    return ir.MaxPool2d(name="pool", inputs=("x",), kernel=kernel, stride=stride,
                        padding=padding)


def avgpool(kernel, stride, requant, act=S8):
    return ir.AvgPool2d(name="pool", inputs=("x",), kernel=kernel, stride=stride,
                        requant=requant, act=act)


def averaging_requant(window, channels=1, clamp=(-128, 127), epsilon=0, shift=15):
    """``multiplier / 2**shift ~ 1 / window``, varied a little per channel so that the per-channel
    ROM is exercised."""
    base = round(2**shift / window)
    multiplier = [base + 37 * c for c in range(channels)]
    return ir.Requant(multiplier=np.array(multiplier, dtype=np.int32),
                      shift=np.array([shift], dtype=np.int32),
                      clamp_min=clamp[0], clamp_max=clamp[1], epsilon=epsilon)


def random_batch(rng, shape, act, inferences=INFERENCES):
    return rng.integers(act.qmin, act.qmax + 1, (inferences, *shape))


def ref_pool(node, x, in_act):
    if isinstance(node, ir.MaxPool2d):
        return reference.maxpool2d(node, x, in_act)
    return reference.avgpool2d(node, x)


def make_engine(node, in_shape, in_act):
    engine = MaxPool2dEngine if isinstance(node, ir.MaxPool2d) else AvgPool2dEngine
    return engine(node, in_shape, in_act)


def rtl_pool(dut, x, seed, **options):
    """Stream a batch through ``dut``; the output batch and the StreamRun."""
    out_size = int(np.prod(dut.out_shape)) // dut.out_width
    run = run_streams(dut, [(dut.i_stream, to_wide(batch_to_beats(x), dut.in_width))],
                      [(dut.o_stream, out_size * len(x))], seed=seed, **options)
    return batch_from_beats(from_wide(run.received[0], dut.out_width), dut.out_shape), run


MAX_CASES = {
    # name: (kernel, stride, padding, in_shape, in_act)
    "2x2s2": ((2, 2), (2, 2), (0, 0), (3, 6, 6), S8),
    "2x2s2-odd-size": ((2, 2), (2, 2), (0, 0), (2, 5, 7), U8),
    "3x3s2p1": ((3, 3), (2, 2), (1, 1), (2, 7, 6), S8),
    "3x3s1p1-one-channel": ((3, 3), (1, 1), (1, 1), (1, 5, 4), S8),
    "3x2-s1x2-p1x0": ((3, 2), (1, 2), (1, 0), (2, 6, 5), S8),
    "2x3-s2x1-p1x1": ((2, 3), (2, 1), (1, 1), (3, 4, 6), U4),
    "1x1": ((1, 1), (1, 1), (0, 0), (3, 3, 3), S8),
    "stride-beyond-kernel": ((2, 2), (3, 3), (0, 0), (2, 7, 8), S8),
    "global": ((4, 5), (1, 1), (0, 0), (2, 4, 5), S3),
    "single-row": ((1, 3), (1, 2), (0, 1), (2, 1, 6), S8),
    "5x5s1p2": ((5, 5), (1, 1), (2, 2), (1, 3, 4), S8),
    "single-column": ((3, 1), (1, 1), (1, 0), (1, 5, 1), S8),
}

AVG_CASES = {
    # name: (kernel, stride, in_shape, in_act, clamp, epsilon)
    "2x2s2": ((2, 2), (2, 2), (4, 6, 6), S8, (-128, 127), 0),
    "3x3s1": ((3, 3), (1, 1), (2, 5, 5), S8, (-128, 127), 1),
    "2x3-s2x1": ((2, 3), (2, 1), (3, 5, 6), U8, (0, 127), 0),
    "global": ((4, 4), (2, 2), (3, 4, 4), S8, (-128, 127), 0),
    "global-stride-1": ((3, 5), (1, 1), (2, 3, 5), U4, (0, 100), 2),
    "global-one-channel": ((6, 6), (6, 6), (1, 6, 6), S8, (-128, 127), 0),
    "single-column": ((2, 1), (1, 1), (1, 4, 1), S8, (-128, 127), 0),
}


def avg_node(name):
    kernel, stride, in_shape, in_act, clamp, epsilon = AVG_CASES[name]
    requant = averaging_requant(kernel[0] * kernel[1], in_shape[0], clamp, epsilon)
    return avgpool(kernel, stride, requant), in_shape, in_act


def max_node(name):
    kernel, stride, padding, in_shape, in_act = MAX_CASES[name]
    return maxpool(kernel, stride, padding), in_shape, in_act


ALL_CASES = [("max", name) for name in MAX_CASES] + [("avg", name) for name in AVG_CASES]


def case(kind, name):
    return max_node(name) if kind == "max" else avg_node(name)


@pytest.mark.parametrize("kind, name", ALL_CASES)
def test_matches_reference_with_gaps(kind, name):
    node, in_shape, in_act = case(kind, name)
    rng = np.random.default_rng(sum(map(ord, kind + name)))
    dut = make_engine(node, in_shape, in_act)
    # Enough output beats (a global pool gives one per channel) for backpressure to meet them.
    x = random_batch(rng, in_shape, in_act,
                     inferences=max(INFERENCES, -(-8 // int(np.prod(dut.out_shape)))))
    expected = ref_pool(node, x, in_act)
    record = [dut.i_stream.valid, dut.i_stream.ready, dut.o_stream.valid, dut.o_stream.ready]
    got, run = rtl_pool(dut, x, seed=len(name), record=record, **GAPS)
    np.testing.assert_array_equal(got, expected)

    in_valid, in_ready, out_valid, out_ready = run.trace.T.astype(bool)
    assert (out_valid & ~out_ready).any() and (in_ready & ~in_valid).any(), "gaps on both sides"
    expected_activity = activity_from_trace(
        taken=in_valid & in_ready, out_taken=out_valid & out_ready,
        starving=in_ready & ~in_valid, blocked=out_valid & ~out_ready,
        inputs_per_inference=int(np.prod(in_shape)),
        outputs_per_inference=int(np.prod(dut.out_shape)))
    assert run.counters == {**expected_activity, "effective_macs": 0, "skipped_pairs": 0}


WIDE_POOLS = [
    # (kind, case name, in_shape override or None, in_width, out_width)
    ("max", "2x2s2", (4, 6, 6), 2, 2),
    ("max", "3x3s2p1", (4, 7, 6), 4, 1),
    ("max", "2x3-s2x1-p1x1", (4, 4, 6), 1, 4),
    ("avg", "2x2s2", None, 4, 4),
    ("avg", "3x3s1", (4, 5, 5), 2, 4),
    ("avg", "global", (8, 4, 4), 8, 2),
    # Every position ends a window in one of two vertical partials: a position reads what the
    # one or two ahead of it write (forwarded).
    ("max", "single-column", (2, 6, 1), 1, 1),
    ("avg", "single-column", (4, 5, 1), 2, 1),
]


@pytest.mark.parametrize("kind, name, shape, in_width, out_width", WIDE_POOLS)
def test_wide_pools_match_reference_with_gaps(kind, name, shape, in_width, out_width):
    """ref vs rtl with beats of 1, 2, 4 or 8 channels, in and out widths mixed."""
    node, in_shape, in_act = case(kind, name)
    if shape is not None:
        in_shape = shape
        if kind == "avg":
            node = avg_node(name)[0]
            node = avgpool(node.kernel, node.stride,
                           averaging_requant(node.kernel[0] * node.kernel[1], shape[0]))
    engine = MaxPool2dEngine if kind == "max" else AvgPool2dEngine
    dut = engine(node, in_shape, in_act, in_width=in_width, out_width=out_width)
    rng = np.random.default_rng(in_width * 10 + out_width)
    x = random_batch(rng, in_shape, in_act, inferences=3)
    got, run = rtl_pool(dut, x, seed=in_width, **GAPS)
    np.testing.assert_array_equal(got, ref_pool(node, x, in_act))
    assert run.counters["busy_cycles"] > 0


def test_wide_scan_takes_a_beat_of_channels_a_cycle():
    node, in_shape, in_act = max_node("2x2s2")
    assert MaxPool2dEngine(node, (4, 6, 6), in_act, in_width=4).scan_cycles == 6 * 6
    with pytest.raises(ValueError, match="stream width that is a power of two dividing 3"):
        MaxPool2dEngine(node, in_shape, in_act, in_width=2)


def test_max_padding_never_wins():
    """All-negative signed inputs: a zero (or any non-qmin) pad value would show."""
    node = maxpool((3, 3), (2, 2), (1, 1))
    rng = np.random.default_rng(5)
    x = rng.integers(S8.qmin, 0, (INFERENCES, 2, 5, 5))
    x[0, 0, 0, 0] = S8.qmin
    got, _ = rtl_pool(MaxPool2dEngine(node, (2, 5, 5), S8), x, seed=5, **GAPS)
    np.testing.assert_array_equal(got, reference.maxpool2d(node, x, S8))
    assert (got < 0).all()


def test_avg_extreme_inputs_sum_exactly():
    """Every input at qmin, then at qmax: the window sums reach both ends of their range."""
    node, in_shape, in_act = avg_node("3x3s1")
    x = np.stack([np.full(in_shape, in_act.qmin), np.full(in_shape, in_act.qmax)])
    got, _ = rtl_pool(AvgPool2dEngine(node, in_shape, in_act), x, seed=1, **GAPS)
    np.testing.assert_array_equal(got, reference.avgpool2d(node, x))


def test_avg_shared_requant():
    requant = ir.Requant(multiplier=np.array([7282], dtype=np.int32),
                         shift=np.array([16], dtype=np.int32), clamp_min=-128, clamp_max=127)
    node = avgpool((3, 3), (3, 3), requant)
    rng = np.random.default_rng(9)
    x = random_batch(rng, (2, 6, 6), S8, inferences=3)
    got, _ = rtl_pool(AvgPool2dEngine(node, (2, 6, 6), S8), x, seed=9, **GAPS)
    np.testing.assert_array_equal(got, reference.avgpool2d(node, x))


def window_last_beats(node, in_shape):
    """For each output beat (HWC), the index of the last input beat its window reads, or None
    when the window ends in the right or bottom padding."""
    channels, height, width = in_shape
    (kh, kw), (sh, sw) = node.kernel, node.stride
    ph, pw = getattr(node, "padding", (0, 0))
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    beats = []
    for i in range(out_h):
        for j in range(out_w):
            last_row, last_col = i * sh - ph + kh - 1, j * sw - pw + kw - 1
            for c in range(channels):
                inside = last_row < height and last_col < width
                beats.append((last_row * width + last_col) * channels + c if inside else None)
    return beats


@pytest.mark.parametrize("kind, name", [("max", "2x2s2"), ("max", "3x3s2p1"),
                                        ("max", "3x3s1p1-one-channel"), ("avg", "3x3s1"),
                                        ("avg", "global")])
def test_latency_and_throughput(kind, name):
    """At full rate: one scan position per cycle, each window out `latency` cycles after the
    last input beat it needs, and counters with no stall."""
    node, in_shape, in_act = case(kind, name)
    dut = make_engine(node, in_shape, in_act)
    x = random_batch(np.random.default_rng(3), in_shape, in_act)
    record = [dut.i_stream.valid, dut.i_stream.ready, dut.o_stream.valid]
    got, run = rtl_pool(dut, x, seed=0, record=record)
    np.testing.assert_array_equal(got, ref_pool(node, x, in_act))
    in_valid, in_ready, out_valid = run.trace.T.astype(bool)
    taken = np.flatnonzero(in_valid & in_ready)
    outputs = np.flatnonzero(out_valid)
    size, out_size = int(np.prod(in_shape)), int(np.prod(dut.out_shape))
    for k in range(len(x)):
        inference_taken = taken[k * size:(k + 1) * size]
        inference_outputs = outputs[k * out_size:(k + 1) * out_size]
        for output, last_beat in zip(inference_outputs, window_last_beats(node, in_shape)):
            if last_beat is not None:
                assert output == inference_taken[last_beat] + dut.latency
    if dut.scan_cycles == size:  # no window ends in the padding: one input beat every cycle
        np.testing.assert_array_equal(taken, taken[0] + np.arange(len(taken)))
    assert run.counters["stall_cycles"] == 0
    assert run.counters["busy_cycles"] == outputs[-1] - taken[0] + 1


def test_scan_cycles():
    assert MaxPool2dEngine(*max_node("2x2s2")).scan_cycles == 3 * 6 * 6
    # 7 rows: the last output row's window ends in the bottom padding, one scan row further.
    assert MaxPool2dEngine(*max_node("3x3s2p1")).scan_cycles == 2 * 8 * 6
    assert AvgPool2dEngine(*avg_node("global")).scan_cycles == 3 * 4 * 4


def test_signature():
    dut = AvgPool2dEngine(*avg_node("2x3-s2x1"))
    assert set(dut.signature.members) == {"i_stream", "o_stream", "counters"}
    assert dut.out_shape == (3, 2, 4)
    assert dut.i_stream.payload.shape() == unsigned(8)
    assert dut.o_stream.payload.shape() == signed(8)


@pytest.mark.parametrize("build, error, message", [
    (lambda: MaxPool2dEngine(avg_node("global")[0], (3, 4, 4), S8), TypeError,
     "node must be a zeroskip.ir.MaxPool2d"),
    (lambda: AvgPool2dEngine(maxpool((2, 2), (2, 2)), (3, 4, 4), S8), TypeError,
     "node must be a zeroskip.ir.AvgPool2d"),
    (lambda: MaxPool2dEngine(maxpool((2, 2), (2, 2)), (3, 4, 4), 8), TypeError, "in_act"),
    (lambda: MaxPool2dEngine(maxpool((2, 2), (2, 2)), (4, 4), S8), ValueError,
     "in_shape must be \\(channels, height, width\\)"),
    (lambda: MaxPool2dEngine(maxpool((2, 2), (2, 2)), [3, 4, 4], S8), ValueError, "in_shape"),
    (lambda: MaxPool2dEngine(maxpool((5, 5), (1, 1)), (1, 4, 4), S8), ValueError,
     "does not fit"),
    (lambda: MaxPool2dEngine(maxpool((2, 2), (1, 1), (2, 2)), (1, 4, 4), S8), ValueError,
     "padding .* at most half"),
    (lambda: AvgPool2dEngine(avgpool((2, 2), (2, 2), averaging_requant(4, 2)), (3, 4, 4), S8),
     ValueError, "requant.multiplier"),
])
def test_constructor_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_converts_to_verilog(monkeypatch):
    monkeypatch.setenv("AMARANTH_USE_YOSYS", "builtin")
    for dut in (MaxPool2dEngine(*max_node("3x3s2p1")), AvgPool2dEngine(*avg_node("global"))):
        text = verilog.convert(dut, name="pool")
        assert "module pool(" in text and "counters__busy_cycles" in text
