# amaranth: UnusedElaboratable=no
"""Wide streams and packed scans at network level: the width converter, the wide argmax, the
network top with mixed widths in the Amaranth simulator and under Verilator, the compile options
and the folding model's choices of widths and packs."""

import json

import numpy as np
import pytest
from amaranth.hdl import signed

import zeroskip
from zeroskip import reference
from zeroskip.design import Design
from zeroskip.errors import ZeroskipError
from zeroskip.hdl.argmax import ArgmaxEngine
from zeroskip.hdl.common import (batch_from_beats, batch_to_beats, encode_beats, from_wide,
                                 to_wide)
from zeroskip.hdl.network import NarrowedNetwork
from zeroskip.hdl.stream import StreamWidthConverter

from hdl_sim import collect, drive, rtl_network, run_streams, simulate
from test_network import S8, inputs, pooled_graph, residual_graph

STALLS = 0.3

#: Widths that make the residual net join streams of different widths at every kind of joint:
#: a converter on a single link (stem -> block.a), on a fork's branch (stem -> block.add), an
#: add taking the narrower of its inputs, a linear reading a flattened wide stream.
MIXED = {"x": 2, "stem": 4, "block.a": 1, "block.b": 2, "block.add": 4, "dw": 4, "pw": 2,
         "gap": 2, "fc": 1}


@pytest.mark.parametrize("in_width, out_width", [(1, 4), (4, 1), (2, 8), (8, 2), (2, 1)])
def test_width_converter_keeps_every_element_in_order_under_stalls(in_width, out_width):
    converter = StreamWidthConverter(signed(8), in_width, out_width)
    values = np.random.default_rng(in_width).integers(-128, 128, 64)
    run = run_streams(converter, [(converter.i_stream, to_wide(values, in_width))],
                      [(converter.o_stream, 64 // out_width)], seed=out_width,
                      idle_probability=STALLS, backpressure_probability=STALLS)
    np.testing.assert_array_equal(from_wide(run.received[0], out_width), values)


def test_width_converter_moves_a_beat_a_cycle_on_its_narrow_side():
    for in_width, out_width in ((1, 4), (4, 1)):
        converter = StreamWidthConverter(signed(8), in_width, out_width)
        values = np.arange(64) - 32
        run = run_streams(converter, [(converter.i_stream, to_wide(values, in_width))],
                          [(converter.o_stream, 64 // out_width)], seed=0,
                          record=[converter.i_stream.valid])
        assert len(run.trace) <= 64 + 3  # the narrow side's 64 beats, the register and skew
    with pytest.raises(ValueError, match="joins two different widths, one dividing the other"):
        StreamWidthConverter(signed(8), 2, 3)


@pytest.mark.parametrize("features, width", [(8, 2), (12, 4), (16, 16), (64, 16)])
def test_wide_argmax_passes_logits_and_gives_numpys_class(features, width):
    rng = np.random.default_rng(features + width)
    batch = rng.integers(-128, 128, (7, features))
    batch[0], batch[1] = -128, 5  # ties everywhere: the first wins
    batch[2, 3::4] = 127
    dut = ArgmaxEngine(features, S8, width)
    received = {}

    async def producer(ctx):
        await drive(ctx, dut.i_stream, to_wide(batch.reshape(-1), width), rng, STALLS)

    async def logits_sink(ctx):
        received["logits"] = await collect(ctx, dut.o_stream, batch.size // width,
                                           np.random.default_rng(2), STALLS)

    async def class_sink(ctx):
        received["class"] = await collect(ctx, dut.o_stream_class, len(batch),
                                          np.random.default_rng(3), 0.6)

    simulate(dut, producer, logits_sink, class_sink)
    np.testing.assert_array_equal(from_wide(received["logits"], width), batch.reshape(-1))
    assert received["class"] == [int(np.argmax(row)) for row in batch]


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(stream_width=MIXED),
                                     dict(stream_width=4, pack=True, lanes=2)],
                         ids=["mixed", "four_packed"])
def test_ref_vs_rtl_network_with_mixed_widths_in_the_amaranth_simulator(options):
    rng = np.random.default_rng(7)
    graph = residual_graph(rng)
    x = inputs(rng, graph, batch=2)
    design = zeroskip.compile(graph, **{"lanes": 2, "chunk": 4, **options})
    outputs, classes = rtl_network(design, x, STALLS)
    expected = reference.run(graph, x)
    np.testing.assert_array_equal(outputs, expected)
    assert classes == list(expected.argmax(axis=1))


@pytest.mark.slow
def test_a_narrowed_network_streams_one_activation_a_beat():
    """The board's view of a wide network: converters at its ports, the same outputs."""
    rng = np.random.default_rng(8)
    graph = pooled_graph(rng)
    x = inputs(rng, graph, batch=2)
    design = zeroskip.compile(graph, lanes=1, stream_width=4)
    assert design.out_width == 4
    dut = NarrowedNetwork(design.engine())
    received = {}

    async def producer(ctx):
        await drive(ctx, dut.i_stream, encode_beats(batch_to_beats(x), graph.input.act),
                    np.random.default_rng(1), STALLS, timeout=20_000)

    async def sink(ctx):
        received["outputs"] = await collect(ctx, dut.o_stream, 2 * 4, np.random.default_rng(2),
                                            STALLS, timeout=20_000)

    async def class_sink(ctx):
        received["classes"] = await collect(ctx, dut.o_stream_class, 2,
                                            np.random.default_rng(3), STALLS, timeout=20_000)

    simulate(dut, producer, sink, class_sink)
    expected = reference.run(graph, x)
    np.testing.assert_array_equal(batch_from_beats(received["outputs"], (4,)), expected)
    assert received["classes"] == list(expected.argmax(axis=1))


# --- the compiler ----------------------------------------------------------------------------


def test_stream_width_caps_every_tensor_and_packs_follow_the_lanes():
    graph = residual_graph(np.random.default_rng(0))
    design = zeroskip.compile(graph, lanes=2, stream_width=4, pack=True)
    # Every tensor at the widest power of two up to 4 dividing its channels; the logits too.
    assert design.widths == {"x": 2, "stem": 4, "block.a": 4, "block.b": 4, "block.add": 4,
                             "dw": 4, "pw": 2, "gap": 2, "fc": 1}
    assert (design.in_width, design.out_width) == (2, 1)
    # The 4-channel layers fit one chunk: one pack of all four filters, cut over the two lanes;
    # the pack must divide the output channels (6 for 'pw', 5 for 'fc').
    assert design.packs == {"stem": 4, "block.a": 4, "block.b": 4, "dw": 4, "pw": 2, "fc": 1}
    assert design.plans["stem"].split == 2 and design.plans["pw"].split == 1
    assert design.architecture.tile_slots == 4
    narrow = zeroskip.compile(graph, lanes=2)
    assert narrow.widths == dict.fromkeys(design.widths, 1)
    assert set(narrow.packs.values()) == {1} and narrow.architecture.tile_slots == 2


def test_bad_stream_widths_and_packs_are_refused():
    graph = residual_graph(np.random.default_rng(0))
    with pytest.raises(ZeroskipError, match=r"tensor 'stem': a stream width must be a power of "
                                            r"two dividing its 4 channels, got 3"):
        zeroskip.compile(graph, stream_width={"stem": 3})
    with pytest.raises(ZeroskipError, match=r"stream widths name no tensor of the graph: "
                                            r"\['nothing'\]"):
        zeroskip.compile(graph, stream_width={"nothing": 2})
    with pytest.raises(ZeroskipError, match="stream_width must be an integer of at least 1"):
        zeroskip.compile(graph, stream_width=0)
    with pytest.raises(ZeroskipError, match="stream_width='auto' chooses the widths by the "
                                            "work measured on calibration inputs"):
        zeroskip.compile(graph, stream_width="auto")
    with pytest.raises(ZeroskipError, match="pack must be True, False or a dict"):
        zeroskip.compile(graph, pack="yes")
    with pytest.raises(ZeroskipError, match="node 'fc': pack 4 makes combo masks of 128 bits"):
        zeroskip.compile(pooled_graph(np.random.default_rng(0)), pack={"fc": 4})
    with pytest.raises(ZeroskipError, match="node 'pw': pack 2 needs a depthwise layer"):
        zeroskip.compile(graph, chunk=2, pack={"pw": 2})
    with pytest.raises(ZeroskipError, match="tile_slots must be a power of two from 2, got 3"):
        zeroskip.compile(graph, tile_slots=3)
    with pytest.raises(ZeroskipError, match="takes neither stream widths nor packs"):
        zeroskip.compile(pooled_graph(np.random.default_rng(0)), architecture="sequential",
                         stream_width=2, chunk=3)


def test_widths_and_packs_go_to_the_manifest_and_load_back(tmp_path):
    rng = np.random.default_rng(4)
    graph = residual_graph(rng)
    design = zeroskip.compile(graph, "auto", multipliers=14, calibration=inputs(rng, graph, 8))
    path = design.write(tmp_path / "build")
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert manifest["stream_widths"] == design.widths and manifest["packs"] == design.packs
    assert manifest["tile_slots"] == 4
    assert manifest["ports"]["i_stream"]["width"] == design.in_width
    layer = next(entry for entry in manifest["layers"] if entry["name"] == "dw")
    assert layer["pack"] == design.packs["dw"] and "in_width" in layer
    assert "pack" in (tmp_path / "build" / "report.txt").read_text()
    loaded = Design.load(tmp_path / "build")
    assert loaded.verilog() == path.read_text()
    assert loaded.widths == design.widths and loaded.packs == design.packs


def test_verilog_of_a_wide_packed_network_is_lint_clean(tmp_path):
    from zeroskip.testbench.verilog import lint

    design = zeroskip.compile(residual_graph(np.random.default_rng(4)), lanes=2,
                              stream_width=MIXED, pack={"dw": 2, "stem": 2})
    lint(design.write(tmp_path), design.top)


# --- Verilator -----------------------------------------------------------------------------


@pytest.mark.verilator
@pytest.mark.slow
def test_verilator_network_with_mixed_widths_is_bit_exact_under_stalls(verilator_build_root):
    """A wide input port, converters inside, packs, random stalls: every output and class
    checked against the golden model; the counters' effective MACs too."""
    rng = np.random.default_rng(13)
    graph = residual_graph(rng)
    x = inputs(rng, graph, batch=6)
    design = zeroskip.compile(graph, lanes=2, stream_width=MIXED, pack={"dw": 2, "stem": 2})
    assert design.in_width == 2
    result = design.simulate(x, idle_probability=STALLS, backpressure_probability=STALLS,
                             seed=3, build_root=verilator_build_root)
    expected = reference.run(graph, x)
    np.testing.assert_array_equal(result.outputs, expected)
    np.testing.assert_array_equal(result.classes, expected.argmax(axis=1))
    work = reference.work(graph, x)
    for name in design.lanes:
        assert result.counters[name]["effective_macs"] == work[name].effective_macs_total
    assert result.counters["network"]["inferences"] == 6


@pytest.mark.verilator
def test_verilator_wide_output_port_and_argmax(verilator_build_root):
    """Four logits a beat leave the top and its argmax; the harness splits them."""
    rng = np.random.default_rng(14)
    graph = pooled_graph(rng)
    x = inputs(rng, graph, batch=5)
    design = zeroskip.compile(graph, lanes=2, stream_width=4)
    assert (design.in_width, design.out_width) == (1, 4)
    result = design.simulate(x, idle_probability=STALLS, backpressure_probability=STALLS,
                             build_root=verilator_build_root)
    expected = reference.run(graph, x)
    np.testing.assert_array_equal(result.outputs, expected)
    np.testing.assert_array_equal(result.classes, expected.argmax(axis=1))
