"""Reset in the middle of an inference, for every engine kind, in the Amaranth simulator.

What a reset guarantees (README, "Reset"): ``rst`` high for a cycle or more returns every
register to its initial value; ROMs (weights, combo lists, schedules, parameters) keep their
contents; RAMs (line buffers, masks, tiles, partials, FIFO storage) keep garbage, which must not
reach any output. The inference in progress is abandoned, its beats lost on both sides; the
first input beat after the reset begins a new inference, and every output from then on is the
golden model's, bit for bit. The counters restart from 0.

Each test interrupts one inference (of inputs at the extremes of their range: they leave the
most behind) during its input, while it computes (outputs held back), or during its output;
fills every RAM with random garbage as the reset begins; then streams two more inferences
(random inputs) under random stalls and compares every beat that comes out, ``ref_*`` (golden)
against ``rtl_*``, and checks that nothing else comes.
"""
# amaranth: UnusedElaboratable=no

import numpy as np
import pytest

import engine_kinds as kinds
from hdl_sim import RESET_PHASES, run_reset
from zeroskip import ir, reference
from zeroskip.hdl.stream import StreamFIFO, StreamFork, StreamRegister

AFTER = 2  # inferences after the reset
S4 = ir.Activation(4, True, 0.1)

KINDS = {
    "conv": lambda rng: kinds.conv_kind(rng, "conv2d", (3, 4, 4), 4, kernel=3, padding=1,
                                        lanes=2, chunk=2),
    "conv-dense": lambda rng: kinds.conv_kind(rng, "conv2d", (3, 4, 4), 4, kernel=3,
                                              padding=1, lanes=2, chunk=2, zero_skip=False),
    "conv-threshold": lambda rng: kinds.conv_kind(rng, "conv2d", (2, 4, 3), 3, kernel=2,
                                                  stride=2, binary_out=True),
    "linear": lambda rng: kinds.conv_kind(rng, "linear", (8,), 3, lanes=2),
    "xnor-conv": lambda rng: kinds.xnor_kind(rng, "conv2d", (3, 4, 4), 4, kernel=3,
                                             padding=1, binary_out=True, lanes=2, width=2),
    "xnor-linear": lambda rng: kinds.xnor_kind(rng, "linear", (10,), 3, width=4),
    "maxpool": lambda rng: kinds.pool_kind(rng, "max", (2, 4, 4), 2, 2),
    "maxpool-padded": lambda rng: kinds.pool_kind(rng, "max", (2, 5, 5), 3, 2, padding=1),
    "avgpool": lambda rng: kinds.pool_kind(rng, "avg", (2, 4, 4), 2, 2),
    "avgpool-global": lambda rng: kinds.pool_kind(rng, "avg", (3, 3, 3), 3, 3),
    "add": lambda rng: kinds.add_kind(rng, (2, 3, 3)),
    "requantizer": lambda rng: kinds.requantizer_kind(rng, 3, 12),
    "argmax": lambda rng: kinds.argmax_kind(5),
    "register": lambda rng: kinds.stream_kind(lambda: StreamRegister(8), 5, 8),
    "fifo": lambda rng: kinds.stream_kind(lambda: StreamFIFO(8, 6), 5, 8),
    "fork": lambda rng: kinds.stream_kind(lambda: StreamFork(8, 2), 5, 8,
                                          outputs=("o_stream_0", "o_stream_1")),
    "network": lambda rng: kinds.network_kind(kinds.classifier_graph(rng), lanes=2, chunk=2),
    "network-residual": lambda rng: kinds.network_kind(kinds.residual_graph(rng), chunk=2),
    "sequential": lambda rng: kinds.network_kind(kinds.classifier_graph(rng), chunk=2,
                                                 architecture="sequential"),
}


def ref_outputs(kind, inputs):
    """The golden model's beats for ``inputs``, per output stream, one list."""
    return {name: [int(v) for v in values.reshape(-1)]
            for name, values in kind.golden(inputs).items()}


def rtl_outputs_after_reset(kind, before, after, phase, seed):
    """The engine's beats per output stream after a reset in ``phase`` of the inference
    ``before``, with ``after`` streamed from the reset on; and the :class:`ResetRun`."""
    engine = kind.make()
    sources = [(getattr(engine, name), list(before[name].reshape(-1)),
                list(after[name].reshape(-1))) for name in kind.inputs]
    sinks = [(getattr(engine, name), beats, beats * AFTER)
             for name, beats in kind.outputs.items()]
    run = run_reset(engine, sources, sinks, phase=phase, seed=seed)
    return dict(zip(kind.outputs, run.received)), run


def check_interrupted(kind, run, phase):
    """The reset came where ``phase`` says: inside the input, with the outputs not begun, or
    inside the output."""
    taken, given = run.moved[0], run.moved[len(kind.inputs)]
    in_beats, out_beats = next(iter(kind.inputs.values())), next(iter(kind.outputs.values()))
    if phase == "input":
        assert 0 < taken < in_beats
    elif phase == "compute":
        assert not any(run.moved[len(kind.inputs):])
    else:
        assert 0 < given < out_beats or out_beats == 1 and given == 0


@pytest.mark.slow
@pytest.mark.parametrize("phase", RESET_PHASES)
@pytest.mark.parametrize("name", sorted(KINDS))
def test_reset_mid_inference_then_the_next_inferences_are_bit_exact(name, phase):
    rng = np.random.default_rng(sorted(KINDS).index(name))
    kind = KINDS[name](rng)
    before, after = kind.sample(rng, 1, loud=True), kind.sample(rng, AFTER)

    rtl, run = rtl_outputs_after_reset(kind, before, after, phase,
                                       seed=RESET_PHASES.index(phase))

    check_interrupted(kind, run, phase)
    assert rtl == ref_outputs(kind, after)


@pytest.mark.parametrize("phase", RESET_PHASES)
def test_counters_restart_at_reset(phase):
    """After the reset, the conv engine's MAC counters hold the next inferences' alone."""
    rng = np.random.default_rng(7)
    kind = KINDS["conv"](rng)
    before, after = kind.sample(rng, 1, loud=True), kind.sample(rng, AFTER)
    x = kinds.tensors(after["i_stream"], kind.graph.input.shape, kind.graph.input.act)
    ref_work = reference.work(kind.graph, x)[kind.graph.output]

    _, run = rtl_outputs_after_reset(kind, before, after, phase, seed=3)
    rtl_counters = run.counters

    assert rtl_counters["effective_macs"] == ref_work.effective_macs_total
    assert rtl_counters["skipped_pairs"] == \
        AFTER * ref_work.dense_macs - ref_work.effective_macs_total
