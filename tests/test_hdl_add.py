# amaranth: UnusedElaboratable=no
"""The add engine in the Amaranth simulator against zeroskip.reference.add.

``ref_add`` is the golden model; ``rtl_add`` streams the same two batches, inference after
inference, through the simulated engine, each input with its own random idle cycles, and the
output with random backpressure.
"""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import signed, unsigned

from zeroskip import ir, reference
from zeroskip.hdl.add import AddEngine
from zeroskip.hdl.common import batch_from_beats, batch_to_beats, from_wide, to_wide

from hdl_sim import activity_from_trace, collect, drive, run_streams, simulate

S8 = ir.Activation(bits=8, signed=True, scale=0.1)
U8 = ir.Activation(bits=8, signed=False, scale=0.1)
U4 = ir.Activation(bits=4, signed=False, scale=0.1)
GAPS = {"idle_probability": 0.35, "backpressure_probability": 0.35}
INFERENCES = 2


def add_node(input_multipliers, multiplier, shift, clamp=(-128, 127), epsilon=0, act=S8):
    requant = ir.Requant(multiplier=np.array(multiplier, dtype=np.int32),
                         shift=np.array(shift, dtype=np.int32),
                         clamp_min=clamp[0], clamp_max=clamp[1], epsilon=epsilon)
    return ir.Add(name="add", inputs=("a", "b"), input_multipliers=input_multipliers,
                  requant=requant, act=act)


def ref_add(node, a, b):
    return reference.add(node, a, b)


def rtl_add(dut, a, b, seed, **options):
    """Stream two batches through ``dut``; the output batch and the StreamRun."""
    sources = [(dut.i_stream_a, to_wide(batch_to_beats(a), dut.in_width)),
               (dut.i_stream_b, to_wide(batch_to_beats(b), dut.in_width))]
    run = run_streams(dut, sources, [(dut.o_stream, a.size // dut.out_width)], seed=seed,
                      **options)
    return batch_from_beats(from_wide(run.received[0], dut.out_width), dut.shape), run


CASES = {
    # name: (node, shape, act_a, act_b)
    "residual": (add_node((1, 1), [1], [1]), (3, 4, 4), S8, S8),
    "scaled-inputs": (add_node((700, 3), [9, 5, 1], [10, 9, 0], epsilon=2), (3, 3, 2), S8, U8),
    "relu-unsigned-out": (add_node((1, 2), [3, 1], [2, 0], clamp=(0, 200), act=U8), (2, 3, 3),
                          U8, S8),
    "flat": (add_node((5, 11), [1], [4], clamp=(-100, 90)), (7,), S8, U4),
    "one-channel": (add_node((65535, 1), [1], [16]), (1, 2, 5), U4, S8),
    "zero-multipliers": (add_node((0, 0), [1], [0], clamp=(-3, 3)), (2, 2, 2), S8, S8),
}


def counter_expectation(run, dut):
    """busy and stall cycles from the handshakes; the add waits whenever its requantizer could
    take a pair (an output slot is free) but one of the inputs is not valid."""
    a_valid, a_ready, b_valid, _, out_valid, out_ready = run.trace.T.astype(bool)
    pair_valid = a_valid & b_valid
    return activity_from_trace(
        taken=pair_valid & a_ready, out_taken=out_valid & out_ready,
        starving=(~out_valid | out_ready) & ~pair_valid, blocked=out_valid & ~out_ready,
        inputs_per_inference=int(np.prod(dut.shape)),
        outputs_per_inference=int(np.prod(dut.shape)))


def recorded(dut):
    return [dut.i_stream_a.valid, dut.i_stream_a.ready, dut.i_stream_b.valid,
            dut.i_stream_b.ready, dut.o_stream.valid, dut.o_stream.ready]


@pytest.mark.parametrize("name", CASES)
def test_matches_reference_with_gaps(name):
    node, shape, act_a, act_b = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    a = rng.integers(act_a.qmin, act_a.qmax + 1, (INFERENCES, *shape))
    b = rng.integers(act_b.qmin, act_b.qmax + 1, (INFERENCES, *shape))
    a[0].flat[:2], b[0].flat[:2] = (act_a.qmin, act_a.qmax), (act_b.qmin, act_b.qmax)
    dut = AddEngine(node, shape, act_a, act_b)
    got, run = rtl_add(dut, a, b, seed=len(name), record=recorded(dut), **GAPS)
    np.testing.assert_array_equal(got, ref_add(node, a, b))
    assert run.counters == {**counter_expectation(run, dut), "effective_macs": 0,
                            "skipped_pairs": 0}


WIDE_CASES = [
    # (node, shape, act_a, act_b, in_width, out_width)
    (add_node((1, 1), [1], [1]), (4, 3, 3), S8, S8, 2, 2),
    (add_node((700, 3), [9, 5, 1, 7], [10, 9, 0, 3], epsilon=2), (4, 3, 2), S8, U8, 4, 4),
    (add_node((1, 2), [3, 1, 2, 5], [2, 0, 1, 2], clamp=(0, 200), act=U8), (4, 2, 3), U8, S8,
     4, 1),
    (add_node((5, 11), [1], [4], clamp=(-100, 90)), (8,), S8, U4, 2, 8),
]


@pytest.mark.parametrize("node, shape, act_a, act_b, in_width, out_width", WIDE_CASES)
def test_wide_add_matches_reference_with_gaps(node, shape, act_a, act_b, in_width, out_width):
    """ref vs rtl with pairs of beats of 2, 4 or 8 activations, the output as wide or not."""
    rng = np.random.default_rng(in_width + 3 * out_width)
    a = rng.integers(act_a.qmin, act_a.qmax + 1, (3, *shape))
    b = rng.integers(act_b.qmin, act_b.qmax + 1, (3, *shape))
    dut = AddEngine(node, shape, act_a, act_b, in_width=in_width, out_width=out_width)
    got, run = rtl_add(dut, a, b, seed=in_width, **GAPS)
    np.testing.assert_array_equal(got, ref_add(node, a, b))
    assert run.counters["busy_cycles"] > 0


def test_inputs_at_different_rates():
    """b starts late and then trickles in while a is always valid: each a beat waits for its b."""
    node, shape, act_a, act_b = CASES["scaled-inputs"]
    rng = np.random.default_rng(4)
    a = rng.integers(act_a.qmin, act_a.qmax + 1, (INFERENCES, *shape))
    b = rng.integers(act_b.qmin, act_b.qmax + 1, (INFERENCES, *shape))
    dut = AddEngine(node, shape, act_a, act_b)
    received = []

    async def producer_a(ctx):
        await drive(ctx, dut.i_stream_a, batch_to_beats(a), rng)

    async def producer_b(ctx):
        await ctx.tick().repeat(20)
        await drive(ctx, dut.i_stream_b, batch_to_beats(b), rng, idle_probability=0.7)

    async def consumer(ctx):
        received.extend(await collect(ctx, dut.o_stream, a.size, rng,
                                      backpressure_probability=0.3))

    simulate(dut, producer_a, producer_b, consumer)
    np.testing.assert_array_equal(batch_from_beats(received, shape), ref_add(node, a, b))


def test_latency_and_throughput():
    node, shape, act_a, act_b = CASES["scaled-inputs"]
    dut = AddEngine(node, shape, act_a, act_b)
    rng = np.random.default_rng(2)
    a = rng.integers(act_a.qmin, act_a.qmax + 1, (INFERENCES, *shape))
    b = rng.integers(act_b.qmin, act_b.qmax + 1, (INFERENCES, *shape))
    got, run = rtl_add(dut, a, b, seed=0, record=recorded(dut))
    np.testing.assert_array_equal(got, ref_add(node, a, b))
    a_valid, a_ready, b_valid, b_ready, out_valid, _ = run.trace.T.astype(bool)
    taken = np.flatnonzero(a_valid & a_ready)
    np.testing.assert_array_equal(taken, np.flatnonzero(b_valid & b_ready))
    np.testing.assert_array_equal(taken, taken[0] + np.arange(a.size))
    np.testing.assert_array_equal(np.flatnonzero(out_valid), taken + AddEngine.latency)
    assert run.counters["stall_cycles"] == 0
    assert run.counters["busy_cycles"] == a.size + AddEngine.latency


def test_signature():
    node, shape, act_a, act_b = CASES["relu-unsigned-out"]
    dut = AddEngine(node, shape, act_a, act_b)
    assert set(dut.signature.members) == {"i_stream_a", "i_stream_b", "o_stream", "counters"}
    assert dut.i_stream_a.payload.shape() == unsigned(8)
    assert dut.i_stream_b.payload.shape() == signed(8)
    assert dut.o_stream.payload.shape() == unsigned(8)


@pytest.mark.parametrize("build, error, message", [
    (lambda: AddEngine("add", (1, 2, 2), S8, S8), TypeError, "node must be a zeroskip.ir.Add"),
    (lambda: AddEngine(add_node((1, 1), [1], [0]), (1, 2, 2), S8, None), TypeError, "act_b"),
    (lambda: AddEngine(add_node((1, 1), [1], [0]), (1, 2), S8, S8), ValueError,
     "shape must be"),
    (lambda: AddEngine(add_node((1, 1), [1, 2], [0]), (3, 2, 2), S8, S8), ValueError,
     "requant.multiplier"),
    (lambda: AddEngine(add_node((1, 1), [1], [0], act=U8), (1, 2, 2), S8, S8), ValueError,
     "clamp_min"),
    (lambda: AddEngine(add_node((1, 1), [1], [0]), (6, 2, 2), S8, S8, in_width=4), ValueError,
     "input of 6 channels takes a stream width that is a power of two dividing 6"),
    (lambda: AddEngine(add_node((1, 1), [1], [0]), (6,), S8, S8, out_width=3), ValueError,
     "flat output of 6 features takes a stream width"),
])
def test_constructor_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_converts_to_verilog(monkeypatch):
    monkeypatch.setenv("AMARANTH_USE_YOSYS", "builtin")
    node, shape, act_a, act_b = CASES["scaled-inputs"]
    text = verilog.convert(AddEngine(node, shape, act_a, act_b), name="add")
    assert "module add(" in text and "i_stream_b__payload" in text
