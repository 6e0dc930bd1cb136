"""The cocotb test module of the UART host link: the host's framing
(:mod:`zeroskip.boards.protocol`, which :mod:`zeroskip.host` uses) against the
:class:`zeroskip.boards.link.HostLink` gateware, bytes over a simulated serial line.

``tests/test_link.py`` builds a HostLink top under Verilator and starts the simulator with this
module and a run directory (in :data:`RUN_DIR_ENV`) holding ``job.json`` (clocks per bit,
timeout, the expected description), ``graph.zsg`` and ``inputs.npy``. The test drives the
``rx`` pin bit by bit with the bytes of :func:`~zeroskip.boards.protocol.encode_infer` and
:func:`~zeroskip.boards.protocol.encode_describe`, decodes the ``tx`` pin back into bytes,
decodes those with :func:`~zeroskip.boards.protocol.decode_result` and
:func:`~zeroskip.boards.protocol.decode_description`, and
checks every logit and class against the golden model (:func:`zeroskip.reference.run`). It also
loads the weights (:func:`~zeroskip.boards.protocol.encode_weights`) when ``job.json`` has them
(``weights``: an SPRAM design's words), after a request of no words, which such a design refuses;
otherwise it sends that request, which a design whose weights are in the bitstream acknowledges;
either way one of 3 words, which it refuses, a
request stopped short and one with a broken frame, each followed by a good one. It writes
``result.json`` (``failure``: null or what went wrong; the decoded results) and fails on the first
difference. Not meant to be run by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer

from zeroskip import ir, reference
from zeroskip.boards import protocol

#: Environment variable naming the run directory.
RUN_DIR_ENV = "ZEROSKIP_LINK_RUN_DIR"
JOB_FILE, GRAPH_FILE, INPUTS_FILE, RESULT_FILE = "job.json", "graph.zsg", "inputs.npy", \
    "result.json"
CLOCK_PERIOD_NS = 10


class SerialLine:
    """Both ends of the host's serial port: writes bytes on ``rx``, reads bytes from ``tx``."""

    def __init__(self, dut, divisor):
        self.dut, self.bit_ns = dut, divisor * CLOCK_PERIOD_NS
        self.received = bytearray()
        self.bad_frames = 0  # frames from the board with a low stop bit
        cocotb.start_soon(self._monitor())

    async def write(self, data, *, broken=()):
        """Send ``data``; the bytes at the indices in ``broken`` get a low stop bit."""
        for index, byte in enumerate(data):
            bits = [0] + [byte >> bit & 1 for bit in range(8)] + [0 if index in broken else 1]
            for level in bits:
                self.dut.rx.value = level
                await Timer(self.bit_ns, unit="ns")
        self.dut.rx.value = 1

    async def read(self, count, timeout_bits):
        """The next ``count`` bytes from the board, or fewer if ``timeout_bits`` bit times pass
        without them."""
        for _ in range(timeout_bits):
            if len(self.received) >= count:
                break
            await Timer(self.bit_ns, unit="ns")
        data = bytes(self.received[:count])
        del self.received[:count]
        return data

    async def _monitor(self):
        tx = self.dut.tx
        while True:
            await FallingEdge(tx)
            await Timer(self.bit_ns // 2, unit="ns")  # the middle of the start bit
            if tx.value != 0:
                continue
            byte = 0
            for bit in range(8):
                await Timer(self.bit_ns, unit="ns")
                byte |= int(tx.value) << bit
            await Timer(self.bit_ns, unit="ns")
            if tx.value != 1:
                self.bad_frames += 1
            self.received.append(byte)


@cocotb.test()
async def link_test(dut):
    run_dir = Path(os.environ[RUN_DIR_ENV])
    job = json.loads((run_dir / JOB_FILE).read_text())
    graph = ir.load(run_dir / GRAPH_FILE)
    x = np.load(run_dir / INPUTS_FILE)
    expected = reference.run(graph, x)
    out_count = expected.shape[1]
    results, failure = [], None
    try:
        Clock(dut.clk, CLOCK_PERIOD_NS, unit="ns", impl="gpi").start()
        dut.rx.value = 1
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        line = SerialLine(dut, job["divisor"])
        # Enough bit times for any answer: the network's latency is far below the timeout.
        patience = 4 * job["timeout_cycles"] // job["divisor"] + 1000

        async def infer(index):
            await line.write(protocol.encode_infer(x[index], graph.input.act))
            answer = await line.read(protocol.result_length(out_count), patience)
            result = protocol.decode_result(answer, out_count)
            np.testing.assert_array_equal(result.logits, expected[index].reshape(-1),
                                          err_msg=f"logits of image {index}")
            assert result.label == int(np.argmax(expected[index])), \
                f"class of image {index}: {result.label}, golden {np.argmax(expected[index])}"
            assert result.latency_cycles > 0, f"latency of image {index} is 0"
            results.append({"image": index, "logits": result.logits.tolist(),
                            "class": result.label, "latency_cycles": result.latency_cycles})

        async def expect_error(flag, what):
            answer = await line.read(protocol.ERROR_LENGTH, patience)
            try:
                protocol.decode_result(answer, out_count)
            except protocol.LinkError as error:
                assert protocol.ERROR_FLAGS[flag] in str(error), f"{what}: {error}"
            else:
                raise AssertionError(f"{what}: the board answered a result")

        await line.write(b"\x00\xff")  # stray bytes where a request should start are ignored
        await line.write(protocol.encode_describe())
        answer = await line.read(protocol.DESCRIPTION_LENGTH, patience)
        description = protocol.decode_description(answer)
        expected_description = protocol.decode_description(bytes.fromhex(job["description"]))
        assert description == expected_description, \
            f"the board describes {description}, expected {expected_description}"

        # A count other than the design's is refused once the line is quiet (its words are not
        # read as requests): 0 words for weights in SPRAM, which then load; 0 words are
        # acknowledged for weights in the bitstream.
        words = job.get("weights", [])
        await line.write(protocol.encode_weights([]))
        if words:
            await expect_error(protocol.COUNT_BIT, "a weights request of 0 words")
            await line.write(protocol.encode_weights(words))
        protocol.decode_ack(await line.read(protocol.ACK_LENGTH, patience))
        await line.write(protocol.encode_weights([protocol.INFER, protocol.DESCRIBE, 0]))
        await expect_error(protocol.COUNT_BIT, "a weights request of 3 words")

        for index in range(len(x) - 1):
            await infer(index)

        # A request stopped short: the board gives up after the timeout, then takes a new one.
        request = protocol.encode_infer(x[-1], graph.input.act)
        await line.write(request[:3])
        await expect_error(protocol.TIMEOUT_BIT, "a request stopped short")
        await infer(len(x) - 1)

        # A broken frame in the middle of an image: the rest of the image is not read as
        # requests, the board reports the framing error, then works again.
        await line.write(request, broken={2})
        await expect_error(protocol.FRAMING_BIT, "a request with a broken frame")
        await infer(0)
        assert line.bad_frames == 0, f"{line.bad_frames} frames from the board had a low stop bit"
        assert not line.received, f"the board sent {len(line.received)} bytes too many"
    except (AssertionError, protocol.LinkError) as error:
        failure = str(error)
    (run_dir / RESULT_FILE).write_text(json.dumps({"failure": failure, "results": results},
                                                  indent=2) + "\n")
    assert failure is None, failure
