# amaranth: UnusedElaboratable=no
"""The UART host link: the UART alone and the whole HostLink in the Amaranth simulator, the
protocol's framing (``zeroskip.boards.protocol``; its own tests are ``test_protocol.py``) against
the HostLink top under Verilator (bytes over a simulated serial line), and ``zeroskip.host.run``
against a board modelled in Python."""

import dataclasses
import json

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator
from hypothesis import given, strategies as st

import zeroskip
from zeroskip import host, ir, reference
from zeroskip.boards import protocol
from zeroskip.boards.link import HostLink
from zeroskip.boards.uart import UARTRx, UARTTx, clocks_per_bit
from zeroskip.cli import main
from zeroskip.hdl.common import batch_from_beats

from test_hdl_xnor import binary_inputs, linear_graph as xnor_linear_graph
from test_protocol import FUZZ, mutated

# The simulated link: 8 clocks per bit keeps simulations short.
CLK_FREQ, BAUD = 1_000_000, 125_000
DIVISOR = 8
# 2048 cycles: 25 frames.
TIMEOUT = 0.002


def frame_levels(data, divisor, *, broken=()):
    """The line levels, one per clock, that send ``data`` (bytes at ``broken`` with a low stop
    bit), then one idle bit."""
    levels = []
    for index, byte in enumerate(data):
        bits = [0] + [byte >> bit & 1 for bit in range(8)] + [0 if index in broken else 1]
        levels += [level for bit in bits for level in [bit] * divisor]
    return levels + [1] * divisor


def decode_levels(levels, divisor):
    """A line's levels, one per clock, back to bytes: each bit sampled in its middle."""
    data, t = bytearray(), 0
    while t < len(levels):
        if levels[t] == 1:
            t += 1
            continue
        middle = t + divisor // 2
        if middle + 9 * divisor >= len(levels):
            break
        bits = [levels[middle + k * divisor] for k in range(10)]
        assert bits[0] == 0 and bits[9] == 1, f"a bad frame at clock {t}: {bits}"
        data.append(sum(bit << k for k, bit in enumerate(bits[1:9])))
        t = middle + 9 * divisor
    return bytes(data)


def simulate(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


# --- UART -------------------------------------------------------------------------------------

def test_clocks_per_bit_checks_the_rate():
    assert clocks_per_bit(12_000_000, 115200) == 104
    assert clocks_per_bit(CLK_FREQ, BAUD) == DIVISOR
    with pytest.raises(ValueError, match="at least 4"):
        clocks_per_bit(1_000_000, 500_000)
    with pytest.raises(ValueError, match="off"):
        clocks_per_bit(1_000_000, 115200)  # 9 clocks per bit give 111111 baud, 3.5% slow
    with pytest.raises(ValueError, match="baud must be a positive"):
        clocks_per_bit(1_000_000, 0)
    with pytest.raises(ValueError, match="divisor"):
        UARTRx(3)


@pytest.mark.parametrize("divisor, data", [(4, bytes(range(0, 256, 7)) + b"\xff"),
                                           (7, b"\x00\xff\x55\xaa\x01\x80"),
                                           (16, b"\x00\xff\x55\xaa\x01\x80")],
                         ids=["4-clocks", "7-clocks", "16-clocks"])
def test_uart_loopback_carries_bytes_back_to_back(divisor, data):
    rx, tx = UARTRx(divisor), UARTTx(divisor)
    m = Module()
    m.submodules.rx, m.submodules.tx = rx, tx
    wiring.connect(m, rx.o_stream, tx.i_stream)
    levels = frame_levels(data, divisor)
    sent = []

    async def testbench(ctx):
        for level in levels + [1] * 12 * divisor:  # the last frame echoed out
            ctx.set(rx.rx, level)
            sent.append(ctx.get(tx.tx))
            assert not ctx.get(rx.framing_error) and not ctx.get(rx.overrun)
            await ctx.tick()

    simulate(m, testbench)
    assert decode_levels(sent, divisor) == data


def test_uart_rx_reports_framing_errors_overruns_and_ignores_glitches():
    rx = UARTRx(DIVISOR)
    pulses = {"framing_error": 0, "overrun": 0}
    received = []

    async def testbench(ctx):
        levels = ([0, 0] + [1] * 3 * DIVISOR            # a glitch shorter than half a bit
                  + frame_levels(b"\xa5", DIVISOR, broken={0})
                  + frame_levels(b"\x3c\x42", DIVISOR))  # the second one overruns the first
        for level in levels:
            ctx.set(rx.rx, level)
            for name in pulses:
                pulses[name] += ctx.get(getattr(rx, name))
            await ctx.tick()
        while ctx.get(rx.o_stream.valid):
            received.append(ctx.get(rx.o_stream.payload))
            ctx.set(rx.o_stream.ready, 1)
            await ctx.tick()

    simulate(rx, testbench)
    assert pulses == {"framing_error": 1, "overrun": 1}
    assert received == [0x3C]


# --- HostLink in the Amaranth simulator -------------------------------------------------------

@pytest.fixture(scope="session")
def tiny():
    return tiny_design()


def flat_classifier(rng, shape, classes, name):
    """An image of ``shape`` of signed bytes flattened into ``classes`` logits of either sign."""
    act = ir.Activation(8, True, 0.1)
    features = int(np.prod(shape))
    weight = rng.integers(-127, 128, (classes, features)) * \
        (rng.random((classes, features)) < 0.5)
    fc = ir.Linear("fc", ("flat",), weight.astype(np.int8), np.zeros(classes, np.int32), 8,
                   np.ones(classes),
                   ir.Requant(np.full(1, 2**14, np.int32), np.full(1, 21, np.int32), -128, 127),
                   act)
    return ir.Graph((ir.Input("x", (), shape, act), ir.Flatten("flat", ("x",)), fc), "fc",
                    name=name)


def tiny_design():
    """An image (3, 2, 4) of signed bytes flattened into 5 logits of either sign: the HWC order,
    two's complement both ways; and 4 images."""
    rng = np.random.default_rng(4)
    graph = flat_classifier(rng, (3, 2, 4), 5, "link_tiny")
    x = rng.integers(-128, 128, (4, 3, 2, 4)) * (rng.random((4, 3, 2, 4)) < 0.6)
    return zeroskip.compile(graph, lanes=2), x


def test_host_link_checks_its_parameters(tiny):
    design, _ = tiny
    with pytest.raises(ValueError, match="clocks per bit"):
        HostLink(design, clk_freq=1_000_000, baud=500_000)
    with pytest.raises(ValueError, match="timeout must be at least 4 UART frames"):
        HostLink(design, clk_freq=CLK_FREQ, baud=BAUD, timeout=0.0001)
    with pytest.raises(ValueError, match="clk_freq must be an integer"):
        HostLink(design, clk_freq=1e6, baud=BAUD)
    pool = ir.Graph((ir.Input("x", (), (3, 4, 4), ir.Activation(8, True, 0.1)),
                     ir.MaxPool2d("pool", ("x",), (2, 2), (2, 2), (0, 0))), "pool", name="pool")
    with pytest.raises(ValueError, match=r"runs classifiers .* 'pool' outputs a \(3, 2, 2\)"):
        HostLink(zeroskip.compile(pool), clk_freq=CLK_FREQ, baud=BAUD)


def run_link(link, requests, answer_lengths):
    """Send each request to ``link`` in the Amaranth simulator, read its answer's bytes."""
    answers = []

    async def testbench(ctx):
        for request, length in zip(requests, answer_lengths):
            levels = frame_levels(request, link.divisor)
            line = []
            for level in levels:
                ctx.set(link.rx, level)
                line.append(ctx.get(link.tx))
                await ctx.tick()
            # Until the whole answer has been sent (looked at once per frame time); the bound
            # allows for the network's work, then the answer's frames.
            for _ in range(20_000 + (length + 1) * 10 * link.divisor):
                line.append(ctx.get(link.tx))
                await ctx.tick()
                if len(line) % (10 * link.divisor) == 0 and \
                        len(decode_levels(line, link.divisor)) == length:
                    break
            answers.append(decode_levels(line, link.divisor))

    simulate(link, testbench)
    return answers


@pytest.mark.slow
def test_host_link_runs_a_binary_input_net_in_the_amaranth_simulator():
    """Binary inputs travel as bytes 0 / 1; binary weights, int8 logits."""
    rng = np.random.default_rng(5)
    graph = xnor_linear_graph(rng, features=12, outputs=3, logits=True)
    x = binary_inputs(rng, graph, batch=2)
    design = zeroskip.compile(graph, lanes=1)
    link = HostLink(design, clk_freq=CLK_FREQ, baud=BAUD, timeout=TIMEOUT)
    requests = [protocol.encode_describe()] + [protocol.encode_infer(item, graph.input.act)
                                           for item in x]
    lengths = [protocol.DESCRIPTION_LENGTH] + [protocol.result_length(3)] * len(x)
    describe, *answers = run_link(link, requests, lengths)
    assert protocol.decode_description(describe) == protocol.expected_description(design, CLK_FREQ)
    for answer, logits in zip(answers, reference.run(graph, x)):
        result = protocol.decode_result(answer, 3)
        np.testing.assert_array_equal(result.logits, logits)
        assert result.label == np.argmax(logits) and result.latency_cycles > 0


@pytest.mark.slow
def test_host_link_runs_a_sequential_design_in_the_amaranth_simulator():
    """One engine running the layers in turn sits behind the link as a pipeline does."""
    pipeline, x = tiny_design()
    design = zeroskip.compile(pipeline.graph, architecture="sequential", chunk=3)
    link = HostLink(design, clk_freq=CLK_FREQ, baud=BAUD, timeout=TIMEOUT)
    requests = [protocol.encode_describe()] + [protocol.encode_infer(item, design.graph.input.act)
                                           for item in x[:2]]
    lengths = [protocol.DESCRIPTION_LENGTH] + [protocol.result_length(5)] * 2
    describe, *answers = run_link(link, requests, lengths)
    assert protocol.decode_description(describe) == protocol.expected_description(design, CLK_FREQ)
    for answer, logits in zip(answers, reference.run(design.graph, x[:2])):
        result = protocol.decode_result(answer, 5)
        np.testing.assert_array_equal(result.logits, logits)
        assert result.label == np.argmax(logits) and result.latency_cycles > 0


@pytest.fixture(scope="session")
def spram(tiny):
    """The tiny net as one sequential engine with its weights in SPRAM (loaded over the link),
    and its images."""
    design, x = tiny
    return zeroskip.compile(design.graph, architecture="sequential", chunk=3,
                            memory="spram"), x


def rejected(answer):
    """The flags of an ``'E'`` answer (an AssertionError for any other)."""
    assert len(answer) == protocol.ERROR_LENGTH and answer[0] == protocol.ERROR, answer
    return answer[1]


@pytest.mark.slow
def test_host_link_loads_spram_weights_then_infers_bit_exact_in_the_amaranth_simulator(spram):
    """The board refuses an image until its weights are loaded and a count that is not the
    design's; it infers bit-exact once they are; a load abandoned after its first word unloads
    them, an abandoned image or a load abandoned before its first word keeps them (the network
    is reset each time)."""
    design, x = spram
    words, act = protocol.weight_words(design), design.graph.input.act
    # 4 clocks per bit and 512 cycles of timeout keep the simulation short.
    link = HostLink(design, clk_freq=CLK_FREQ, baud=2 * BAUD, timeout=TIMEOUT / 4)
    load, image = protocol.encode_weights(words), [protocol.encode_infer(item, act) for item in x]
    flags = {name: 1 << getattr(protocol, f"{name}_BIT") for name in ("NO_WEIGHTS", "COUNT",
                                                                      "TIMEOUT")}
    script = [  # (request, answer length, the answer's error flags or None)
        (protocol.encode_describe(), protocol.DESCRIPTION_LENGTH, None),
        (image[0], protocol.ERROR_LENGTH, flags["NO_WEIGHTS"]),
        # A count one too many, then a few words (ignored with the rest of the line).
        (protocol.encode_weights(words + [0])[:11], protocol.ERROR_LENGTH, flags["COUNT"]),
        (load, protocol.ACK_LENGTH, None),
        (image[0], protocol.result_length(5), None),
        (load[:9], protocol.ERROR_LENGTH, flags["TIMEOUT"]),      # 2 words of a load
        (image[1], protocol.ERROR_LENGTH, flags["NO_WEIGHTS"]),
        (load, protocol.ACK_LENGTH, None),
        (image[1][:5], protocol.ERROR_LENGTH, flags["TIMEOUT"]),  # 4 values of an image
        (load[:3], protocol.ERROR_LENGTH, flags["TIMEOUT"]),      # half a count
        (image[1], protocol.result_length(5), None),
    ]
    answers = run_link(link, [request for request, _, _ in script],
                       [length for _, length, _ in script])
    assert protocol.decode_description(answers[0]) == \
        protocol.expected_description(design, CLK_FREQ)
    assert protocol.decode_description(answers[0]).weight_words == len(words) > 0
    for (_, _, expected), answer in zip(script[1:], answers[1:]):
        if expected is not None:
            assert rejected(answer) == expected
    protocol.decode_ack(answers[3])
    for answer, logits in zip((answers[4], answers[-1]), reference.run(design.graph, x[:2])):
        result = protocol.decode_result(answer, 5)
        np.testing.assert_array_equal(result.logits, logits)
        assert result.label == np.argmax(logits)


@pytest.mark.slow
def test_host_link_runs_a_design_with_wide_ports_in_the_amaranth_simulator():
    """Four activations a beat in and out of the network; the link still carries one value a
    byte (width converters at the network's ports)."""
    rng = np.random.default_rng(6)
    graph = flat_classifier(rng, (4, 2, 2), 4, "link_wide")
    act = graph.input.act
    x = rng.integers(-128, 128, (2, 4, 2, 2))
    design = zeroskip.compile(graph, lanes=2, stream_width=4)
    assert (design.in_width, design.out_width) == (4, 4)
    link = HostLink(design, clk_freq=CLK_FREQ, baud=BAUD, timeout=TIMEOUT)
    requests = [protocol.encode_infer(item, act) for item in x]
    answers = run_link(link, requests, [protocol.result_length(4)] * len(x))
    for answer, logits in zip(answers, reference.run(graph, x)):
        result = protocol.decode_result(answer, 4)
        np.testing.assert_array_equal(result.logits, logits)
        assert result.label == np.argmax(logits)


# --- HostLink under Verilator -----------------------------------------------------------------

@pytest.fixture(scope="session")
def link_model(verilator_build_root, tiny):
    """The tiny net as a sequential engine with its weights in SPRAM, behind the link: the
    weights load over the simulated UART before the images."""
    from zeroskip.testbench import runner
    from zeroskip.hdl.verilog import convert

    design, x = tiny
    design = zeroskip.compile(design.graph, 2, architecture="sequential", memory="spram")
    assert len(design.preload_words()) > 3  # not the count the test's refused request gives
    link = HostLink(design, clk_freq=CLK_FREQ, baud=BAUD, timeout=TIMEOUT)
    model = runner.build_model(convert(link, "link_tiny"), "link_tiny", verilator_build_root,
                               ports_only=True)
    return model, link, x


@pytest.mark.verilator
@pytest.mark.slow
def test_host_framing_against_the_gateware_over_a_simulated_uart(link_model, tmp_path):
    from zeroskip.testbench import link_test, runner

    model, link, x = link_model
    link.design.graph.save(tmp_path / link_test.GRAPH_FILE)
    np.save(tmp_path / link_test.INPUTS_FILE, x)
    (tmp_path / link_test.JOB_FILE).write_text(json.dumps({
        "divisor": link.divisor, "timeout_cycles": 1 << link.timeout_bits,
        "description": link.description.hex(),
        "weights": [int(word) for word in link.design.preload_words()]}))
    runner.run_test_module(model, "zeroskip.testbench.link_test", tmp_path,
                           link_test.RUN_DIR_ENV, None)
    result_path = tmp_path / link_test.RESULT_FILE
    assert result_path.is_file(), (tmp_path / "sim.log").read_text()[-3000:]
    result = json.loads(result_path.read_text())
    assert result["failure"] is None, result["failure"]
    expected = reference.run(link.design.graph, x)
    # Images 0..2, image 3 after the short request, image 0 again after the broken frame.
    assert [entry["image"] for entry in result["results"]] == [0, 1, 2, 3, 0]
    for entry in result["results"]:
        assert entry["logits"] == expected[entry["image"]].tolist()
        assert entry["class"] == int(np.argmax(expected[entry["image"]]))


# --- zeroskip.host.run and `zeroskip run` against a board modelled in Python -----------------

class ModelBoard:
    """A serial port with a board behind it that answers like HostLink, from the golden model.

    ``corrupt`` adds 1 to the first logit of that image; ``changes`` replaces fields of the
    description it answers; ``rejections`` maps an image to the error flags of the ``'E'``
    answers its requests get, in turn, before one is answered (``"W"`` the weights' requests);
    ``wrong_class`` answers that image with a class one past the last logit. ``requests`` lists
    the image each request was (``"W"`` a load of weights), ``loads`` the words each load
    brought. A design with weights to load answers images only once they are, and only
    the design's.
    """

    timeout = 1.0

    def __init__(self, design, clk_freq=CLK_FREQ, corrupt=None, *, changes=None,
                 rejections=None, wrong_class=None):
        self.design, self.corrupt, self.wrong_class = design, corrupt, wrong_class
        self.description = dataclasses.replace(
            protocol.expected_description(design, clk_freq), **(changes or {}))
        self.rejections = {image: list(flags) for image, flags in (rejections or {}).items()}
        self.pending, self.answers, self.requests, self.loads = bytearray(), bytearray(), [], []
        self.images = 0  # images answered: the host sends the next one only after an answer
        self.loaded = not self.description.weight_words

    def reset_input_buffer(self):
        self.answers.clear()

    def write(self, data):
        self.pending += data
        in_count = self.description.in_count
        while self.pending:
            if self.pending[0] == protocol.DESCRIBE:
                self.answers += self.description.encode()
                del self.pending[:1]
            elif self.pending[0] == protocol.INFER and len(self.pending) > in_count:
                self.requests.append(self.images)
                self.answers += self.answer(bytes(self.pending[1:in_count + 1]))
                del self.pending[:in_count + 1]
            elif self.pending[0] == protocol.WEIGHTS and len(self.pending) >= 5 and \
                    len(self.pending) >= 5 + 2 * int.from_bytes(self.pending[1:5], "little"):
                end = 5 + 2 * int.from_bytes(self.pending[1:5], "little")
                self.requests.append("W")
                self.answers += self.load(bytes(self.pending[1:end]))
                del self.pending[:end]
            else:
                break

    def load(self, request):
        """The answer to a ``'W'`` request with these count and word bytes."""
        words = np.frombuffer(request[4:], "<u2").tolist()
        self.loads.append(words)
        if self.rejections.get("W"):
            self.loaded = False  # abandoned after its first word
            return bytes([protocol.ERROR, self.rejections["W"].pop(0)])
        if len(words) != self.description.weight_words:
            return bytes([protocol.ERROR, 1 << protocol.COUNT_BIT])
        assert words == protocol.weight_words(self.design), "the board got other weights"
        self.loaded = True
        return bytes([protocol.ACK])

    def answer(self, request):
        """The answer to an ``'I'`` request with these input bytes."""
        if not self.loaded:
            return bytes([protocol.ERROR, 1 << protocol.NO_WEIGHTS_BIT])
        if self.rejections.get(self.images):
            return bytes([protocol.ERROR, self.rejections[self.images].pop(0)])
        values = np.frombuffer(request, np.int8)
        x = batch_from_beats(values.astype(np.int64), self.design.in_shape)
        logits = reference.run(self.design.graph, x)[0]
        if self.images == self.corrupt:
            logits[0] += 1
        label = len(logits) if self.images == self.wrong_class else int(np.argmax(logits))
        self.images += 1
        return protocol.Result(logits, label, 1234).encode()

    def close(self):
        self.pending.clear()

    def read(self, count):
        data = bytes(self.answers[:count])
        del self.answers[:count]
        return data


@pytest.mark.slow
def test_run_sends_each_image_and_checks_the_design(tiny):
    design, x = tiny
    result = host.run(ModelBoard(design), x, design=design)
    expected = reference.run(design.graph, x)
    np.testing.assert_array_equal(result.logits, expected)
    np.testing.assert_array_equal(result.labels, expected.argmax(axis=1))
    assert result.latency_cycles.tolist() == [1234] * len(x)
    assert result.latency_seconds[0] == pytest.approx(1234 / CLK_FREQ)
    with pytest.raises(host.LinkError, match="the board runs another design"):
        host.run(ModelBoard(design), x, design=zeroskip.compile(design.graph, lanes=1))
    with pytest.raises(host.InputMismatch, match="takes 24 values per image"):
        host.run(ModelBoard(design), x[:, :2])
    with pytest.raises(host.InputMismatch, match=r"integers in \[-128, 127\]"):
        host.run(ModelBoard(design), x + 200)


FRAMING_FLAG, TIMEOUT_FLAG = 1 << protocol.FRAMING_BIT, 1 << protocol.TIMEOUT_BIT
NO_WEIGHTS_FLAG = 1 << protocol.NO_WEIGHTS_BIT


def test_run_loads_the_weights_a_board_needs_before_the_first_image(spram):
    design, x = spram
    board = ModelBoard(design, rejections={"W": [TIMEOUT_FLAG]})
    result = host.run(board, x, design=design)
    np.testing.assert_array_equal(result.logits, reference.run(design.graph, x))
    assert board.requests == ["W", "W", 0, 1, 2, 3]  # sent again after the 'E'
    assert board.loads == [protocol.weight_words(design)] * 2
    assert result.weight_words == len(protocol.weight_words(design)) == 69
    with pytest.raises(host.WeightsNeeded, match="^the board's design needs its 69 weight "
                                                 "words loaded before it infers, and no design"):
        host.run(ModelBoard(design), x)
    board = ModelBoard(design, rejections={"W": [TIMEOUT_FLAG] * host.ATTEMPTS})
    with pytest.raises(host.LinkError, match=r"^the weights \(69 words\): the board rejected "
                                             r"it 3 times: timeout"):
        host.run(board, x, design=design)
    assert board.requests == ["W"] * host.ATTEMPTS  # and no image


def test_run_stops_at_once_when_the_board_refuses_for_another_reason_than_the_line(tiny):
    """An image refused for want of weights (the board was reset since they were loaded) is
    not sent again: it would be refused again."""
    design, x = tiny
    board = ModelBoard(design, rejections={1: [NO_WEIGHTS_FLAG]})
    with pytest.raises(host.LinkError) as error:
        host.run(board, x)
    assert str(error.value) == (f"image 1: the board rejected it: "
                                f"{protocol.ERROR_FLAGS[protocol.NO_WEIGHTS_BIT]} (error code "
                                "0x10)")
    assert board.requests == [0, 1]


def test_run_sends_an_image_the_board_rejected_again(tiny):
    design, x = tiny
    board = ModelBoard(design, rejections={1: [TIMEOUT_FLAG, FRAMING_FLAG]})
    result = host.run(board, x)
    np.testing.assert_array_equal(result.logits, reference.run(design.graph, x))
    assert board.requests == [0, 1, 1, 1, 2, 3] and len(result.wall_seconds) == len(x)


def test_run_gives_up_on_an_image_rejected_every_time_naming_it_and_the_flags(tiny):
    design, x = tiny
    board = ModelBoard(design, rejections={2: [TIMEOUT_FLAG, FRAMING_FLAG, TIMEOUT_FLAG, 0]})
    with pytest.raises(host.LinkError) as error:
        host.run(board, x)
    assert str(error.value) == (
        f"image 2: the board rejected it {host.ATTEMPTS} times: "
        f"{protocol.ERROR_FLAGS[protocol.FRAMING_BIT]}, "
        f"{protocol.ERROR_FLAGS[protocol.TIMEOUT_BIT]} (error codes 0x04, 0x01, 0x04)")
    assert board.requests == [0, 1, 2, 2, 2]


@pytest.mark.parametrize("changes, message", [
    ({"version": 1}, "the board speaks link protocol version 1, this host version 2"),
    ({"clk_freq": 0}, "the board reports a clock of 0 Hz: its latencies in cycles cannot be "
                      "converted to seconds"),
    ({"in_encoding": (9, True)}, "the board describes an input encoding the protocol does not "
                                 "carry (9-bit, signed): field 'bits': must be <= 8, got 9"),
    ({"in_encoding": (1, False)}, "the board describes an input encoding the protocol does not "
                                  "carry (1-bit, unsigned): field 'signed': a binary (1-bit) "
                                  "activation must be signed: its values are -1 and +1"),
], ids=["version", "clock-0", "9-bits", "unsigned-binary"])
def test_run_checks_the_description_with_or_without_a_build(tiny, changes, message):
    design, x = tiny
    for build in (None, design):
        board = ModelBoard(design, changes=changes)
        with pytest.raises(host.LinkError) as error:
            host.run(board, x, design=build)
        assert str(error.value) == message and not board.requests


def test_run_refuses_a_class_beyond_the_logits(tiny):
    design, x = tiny
    with pytest.raises(host.LinkError, match=r"^image 1: the board answered class 5, beyond "
                                             r"its 5 logits$"):
        host.run(ModelBoard(design, wrong_class=1), x)


class ScriptedPort:
    """A serial port whose board answers each request written with the next of ``answers``
    (and nothing once they run out)."""

    timeout = 1.0

    def __init__(self, answers):
        self.script, self.answers = list(answers), bytearray()

    def reset_input_buffer(self):
        self.answers.clear()

    def write(self, data):
        if self.script:
            self.answers += self.script.pop(0)

    def read(self, count):
        data = bytes(self.answers[:count])
        del self.answers[:count]
        return data


SCRIPTED_DESCRIPTION = protocol.Description(protocol.PROTOCOL_VERSION, 4, (8, True), 3, (8, True),
                                            1_000_000, 0x1234, 0)


@FUZZ
@given(describe=mutated(SCRIPTED_DESCRIPTION.encode()), answers=st.lists(
    mutated(protocol.Result(np.array([5, -7, 9]), 2, 1234).encode())
    | st.integers(0, 255).map(lambda flags: bytes([protocol.ERROR, flags])), max_size=8))
def test_run_over_a_fuzzed_line_returns_results_or_a_one_line_error(describe, answers):
    """Whatever a board answers, run gives results the protocol allows, or a LinkError /
    InputMismatch of one line: no other exception."""
    x = np.array([[1, -2, 3, -4], [0, 7, -8, 5]])
    try:
        run = host.run(ScriptedPort([describe, *answers]), x)
    except (host.LinkError, host.InputMismatch) as error:
        assert "\n" not in str(error)
        return
    assert run.description.version == protocol.PROTOCOL_VERSION
    assert run.description.clk_freq > 0 and run.labels.shape == (len(x),)
    assert ((0 <= run.labels) & (run.labels < run.description.out_count)).all()


@pytest.fixture
def board_build(tmp_path, tiny):
    design, x = tiny
    design.write(tmp_path / "build")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", reference.run(design.graph, x).argmax(axis=1))
    return design, tmp_path


@pytest.mark.slow
def test_cli_run_prints_classes_accuracy_and_the_golden_check(board_build, monkeypatch, capsys):
    design, path = board_build
    monkeypatch.setattr(host, "_open", lambda port, baud: ModelBoard(design))
    argv = ["run", "--port", "model", "--inputs", str(path / "x.npy"), "--build",
            str(path / "build"), "--labels", str(path / "y.npy"), "--json", str(path / "r.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "accuracy: 100.00 %" in out and "board == golden model: 4/4 images" in out
    assert json.loads((path / "r.json").read_text())["golden_identical"] == 4

    monkeypatch.setattr(host, "_open", lambda port, baud: ModelBoard(design, corrupt=2))
    assert main(argv) == 1
    assert "output of image 2 differs from the golden model" in capsys.readouterr().err


def test_cli_run_refuses_bad_input_in_one_line(board_build, monkeypatch, capsys):
    design, path = board_build
    assert main(["run", "--port", str(path / "no-such-tty"), "--inputs",
                 str(path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-tty" in err and "cannot open" in err
    np.save(path / "wrong.npy", np.zeros((2, 5), np.float32))
    assert main(["run", "--port", "x", "--inputs", str(path / "wrong.npy")]) == 2
    assert "float inputs need --build" in capsys.readouterr().err
    np.save(path / "wrong.npy", np.zeros((2, 5)))
    assert main(["run", "--port", "x", "--inputs", str(path / "wrong.npy"), "--build",
                 str(path / "build")]) == 2
    assert "--inputs" in capsys.readouterr().err
    np.save(path / "wrong.npy", np.zeros((2, 5), np.int64))
    monkeypatch.setattr(host, "_open", lambda port, baud: ModelBoard(design))
    assert main(["run", "--port", "model", "--inputs", str(path / "wrong.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--inputs" in err and "takes 24 values per image" in err


def test_cli_run_with_a_board_at_clock_0_is_one_line(board_build, monkeypatch, capsys):
    design, path = board_build
    monkeypatch.setattr(host, "_open", lambda port, baud: ModelBoard(design, clk_freq=0))
    for build in ([], ["--build", str(path / "build")]):
        assert main(["run", "--port", "model", "--inputs", str(path / "x.npy"), *build]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "--port model: the board reports a clock of 0 Hz" in err, err


def test_cli_run_loads_the_weights_from_the_build_or_says_it_needs_one(spram, tmp_path,
                                                                       monkeypatch, capsys):
    design, x = spram
    design.write(tmp_path / "build")
    np.save(tmp_path / "x.npy", x)
    boards = []
    monkeypatch.setattr(host, "_open", lambda port, baud: boards.append(ModelBoard(design)) or
                        boards[-1])
    argv = ["run", "--port", "model", "--inputs", str(tmp_path / "x.npy"), "--json",
            str(tmp_path / "r.json")]
    assert main(argv + ["--build", str(tmp_path / "build")]) == 0
    out = capsys.readouterr().out
    assert "4 images, 69 weight words loaded first" in out and "board == golden model: 4/4" in out
    assert boards[-1].requests == ["W", 0, 1, 2, 3]
    assert json.loads((tmp_path / "r.json").read_text())["weight_words"] == 69
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("zeroskip: error: --port model: the board's design needs its 69 weight "
                          "words loaded") and "--build names the build directory" in err, err
    assert boards[-1].requests == []
