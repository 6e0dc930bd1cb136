"""A whole network as one dataflow top: an engine per layer, joined by streams.

::

    i_stream -> engine -> engine -> fork -+-> FIFO -> engine -> engine -+-> add -> ... -> argmax
                                          +-> FIFO ---------------------+                 |
                                                                            o_stream (logits)
                                                                            o_stream_class

Every layer of the graph becomes its engine (:mod:`.conv`, :mod:`.pool`, :mod:`.add`); a flatten
costs nothing (the compiler permutes the next linear layer's columns to the HWC stream). Every
single link goes through a :class:`StreamRegister`, so no handshake path spans engines. A tensor
read by several layers goes through a :class:`StreamFork`, and every branch of a fork gets a FIFO
holding one whole tensor: then no branch can stall the fork while another still needs input of
an inference the first has finished with, so the joins (adds) never deadlock, whatever the
branches hold. A flat output also goes through :class:`ArgmaxEngine`, which adds the class
stream. :class:`NetworkCounters` measures the latency and the initiation interval in hardware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth.hdl import Cat, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .. import ir
from .activity import count_beats
from .common import COUNTER_WIDTH, activation_shape, activation_stream, counters_signature

__all__ = ["ArgmaxEngine", "LayerSpec", "NetworkCounters", "NetworkEngine", "StreamFork",
           "StreamRegister", "NETWORK_COUNTER_NAMES"]

#: The network's own counters: inferences finished, the latency of the last one (its first input
#: beat taken to its last logit given, inclusive) and the interval between the last logits of the
#: last two (the initiation interval, in steady state).
NETWORK_COUNTER_NAMES = ("inferences", "latency_cycles", "interval_cycles")


class StreamFork(wiring.Component):
    """One stream to several consumers: every beat goes to all of them.

    An output that takes a beat early is not offered it again while the others catch up
    (verilog-axis's broadcast without its register), so consumers need not be ready together.

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_stream_0 ... o_stream_{n-1} : Out(stream.Signature(shape))

    Latency 0 (combinational); one beat per cycle when every consumer is ready.
    """

    def __init__(self, shape, outputs):
        if not isinstance(outputs, int) or outputs < 2:
            raise ValueError(f"a fork needs at least 2 outputs, got {outputs!r}")
        self.outputs = outputs
        members = {"i_stream": In(stream.Signature(shape))}
        members.update({f"o_stream_{index}": Out(stream.Signature(shape))
                        for index in range(outputs)})
        super().__init__(members)

    def output(self, index):
        return getattr(self, f"o_stream_{index}")

    def elaborate(self, platform):
        m = Module()
        sent = Signal(self.outputs)  # outputs that have taken the current beat already
        outs = [self.output(index) for index in range(self.outputs)]
        done = Cat(out.ready | sent[index] for index, out in enumerate(outs)).all()
        m.d.comb += self.i_stream.ready.eq(done)
        for index, out in enumerate(outs):
            m.d.comb += [out.payload.eq(self.i_stream.payload),
                         out.valid.eq(self.i_stream.valid & ~sent[index])]
        with m.If(self.i_stream.valid):
            with m.If(done):
                m.d.sync += sent.eq(0)
            with m.Else():
                m.d.sync += sent.eq(sent | Cat(out.ready for out in outs))
        return m


class StreamRegister(wiring.Component):
    """A register slice with a skid register (verilog-axis's ``axis_register``, skid type):
    ``valid``, ``payload`` and ``ready`` all leave registers, so no combinational path crosses
    it in either direction.

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_stream : Out(stream.Signature(shape))

    Latency 1 cycle; one beat per cycle.
    """

    def __init__(self, shape):
        self.shape = shape
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        # A beat that arrived while the output was held: ready was already given for it.
        skid = Signal(self.shape)
        skid_valid = Signal()
        m.d.comb += self.i_stream.ready.eq(~skid_valid)
        with m.If(self.o_stream.ready | ~self.o_stream.valid):
            with m.If(skid_valid):
                m.d.sync += [self.o_stream.payload.eq(skid), self.o_stream.valid.eq(1),
                             skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o_stream.payload.eq(self.i_stream.payload),
                             self.o_stream.valid.eq(self.i_stream.valid)]
        with m.Elif(self.i_stream.valid & ~skid_valid):
            m.d.sync += [skid.eq(self.i_stream.payload), skid_valid.eq(1)]
        return m


class StreamFIFO(wiring.Component):
    """A stream FIFO of ``depth`` beats (:class:`amaranth.lib.fifo.SyncFIFOBuffered`).

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_stream : Out(stream.Signature(shape))

    Latency 1 cycle when empty; one beat per cycle.
    """

    def __init__(self, shape, depth):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        self.shape, self.depth = shape, depth
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=Shape.cast(self.shape).width,
                                                    depth=self.depth)
        m.d.comb += [
            fifo.w_data.eq(self.i_stream.payload), fifo.w_en.eq(self.i_stream.valid),
            self.i_stream.ready.eq(fifo.w_rdy),
            self.o_stream.payload.eq(fifo.r_data), self.o_stream.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o_stream.ready),
        ]
        return m


class ArgmaxEngine(wiring.Component):
    """Passes the logits through and gives, after each inference's last one, its class.

    The class is the index of the largest logit, the first of equal ones (numpy's ``argmax``).

    Parameters
    ----------
    features : int
        Logits per inference.
    act : zeroskip.ir.Activation
        Their encoding.

    Members
    -------
    i_stream : In(stream.Signature(logit))
    o_stream : Out(stream.Signature(logit))
        The logits, unchanged (combinational path).
    o_stream_class : Out(stream.Signature(range(features)))
        One beat per inference, two cycles after its last logit is given.

    Latency: 0 for the logits, 2 cycles for the class. One logit per cycle; an inference's last
    logit waits while the previous class has not been taken.
    """

    def __init__(self, features, act):
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive integer, got {features!r}")
        self.features, self.act = features, act
        super().__init__({
            "i_stream": In(activation_stream(act)),
            "o_stream": Out(activation_stream(act)),
            "o_stream_class": Out(stream.Signature(range(max(features, 2)))),
        })

    def elaborate(self, platform):
        m = Module()
        # Between inferences the best is the smallest value at index 0: then an inference's
        # first logit needs no comparison of its own (one logic level less on the update).
        shape = activation_shape(self.act)
        smallest = -(1 << (shape.width - 1)) if shape.signed else 0
        best_value = Signal(shape, init=smallest)
        best_index = Signal(range(max(self.features, 2)))
        class_valid = Signal()
        given = self.o_stream.valid & self.o_stream.ready
        position, last = count_beats(m, given, self.features)
        # The logit given, compared with the best the cycle after: the comparison then does not
        # share a cycle with the output's handshake.
        seen = Signal(data.StructLayout({"valid": 1, "last": 1, "value": best_value.shape(),
                                         "position": best_index.shape()}))
        # An inference's last logit waits while a class, or a last logit still to compare, is
        # ahead of it: so a class never overwrites one not taken.
        hold = last & (class_valid | seen.valid & seen.last)
        m.d.comb += [
            self.o_stream.payload.eq(self.i_stream.payload),
            self.o_stream.valid.eq(self.i_stream.valid & ~hold),
            self.i_stream.ready.eq(self.o_stream.ready & ~hold),
            self.o_stream_class.valid.eq(class_valid),
        ]
        m.d.sync += [seen.valid.eq(given), seen.last.eq(last),
                     seen.value.eq(self.i_stream.payload), seen.position.eq(position)]
        # Strictly greater: the first of equal logits wins, as in numpy.
        better = seen.value > best_value
        index = Mux(better, seen.position, best_index)
        with m.If(self.o_stream_class.ready):
            m.d.sync += class_valid.eq(0)
        with m.If(seen.valid):
            with m.If(seen.last):
                m.d.sync += [class_valid.eq(1), self.o_stream_class.payload.eq(index),
                             best_value.eq(smallest), best_index.eq(0)]
            with m.Elif(better):
                m.d.sync += [best_value.eq(seen.value), best_index.eq(seen.position)]
        return m


def network_counters_signature():
    return wiring.Signature({name: Out(COUNTER_WIDTH) for name in NETWORK_COUNTER_NAMES})


class NetworkCounters(wiring.Component):
    """Latency and initiation interval, watched on the input and the output handshakes.

    Each inference's first-input cycle waits in a ring of ``inflight`` entries until its last
    output beat; ``inflight`` must exceed the inferences the pipeline can hold at once.

    Members
    -------
    input_taken, output_taken : In(1)
        Handshakes of the network's input stream and of its output (logit) stream.
    counters : Out(Signature of :data:`NETWORK_COUNTER_NAMES`, 32 bits each)
    """

    def __init__(self, in_beats, out_beats, inflight):
        self.in_beats, self.out_beats = in_beats, out_beats
        self.inflight = 1 << max(ceil_log2(inflight), 1)
        super().__init__({"input_taken": In(1), "output_taken": In(1),
                          "counters": Out(network_counters_signature())})

    def elaborate(self, platform):
        m = Module()
        cycle = Signal(COUNTER_WIDTH)
        m.d.sync += cycle.eq(cycle + 1)
        in_position, _ = count_beats(m, self.input_taken, self.in_beats)
        _, out_last = count_beats(m, self.output_taken, self.out_beats)
        m.submodules.starts = starts = Memory(shape=COUNTER_WIDTH, depth=self.inflight, init=[])
        # A registered read (a RAM block, not a register file): its address is the entry of
        # the inference finishing next, so the start is ready by the time it finishes.
        write = starts.write_port()
        read = starts.read_port(transparent_for=(write,))
        started = Signal(ceil_log2(self.inflight))
        finished = Signal(ceil_log2(self.inflight))
        last_finish = Signal(COUNTER_WIDTH)
        first_beat = self.input_taken & (in_position == 0)
        finishing = self.output_taken & out_last
        m.d.comb += [write.addr.eq(started), write.data.eq(cycle), write.en.eq(first_beat),
                     read.addr.eq(Mux(finishing, finished + 1, finished))]
        with m.If(first_beat):
            m.d.sync += started.eq(started + 1)
        with m.If(finishing):
            m.d.sync += [finished.eq(finished + 1), last_finish.eq(cycle),
                         self.counters.inferences.eq(self.counters.inferences + 1),
                         self.counters.latency_cycles.eq(cycle - read.data + 1)]
            with m.If(self.counters.inferences != 0):
                m.d.sync += self.counters.interval_cycles.eq(cycle - last_finish)
        return m


@dataclass(frozen=True)
class LayerSpec:
    """One engine of the network: what the compiler decided for a layer.

    ``node`` is the layer as the engine computes it (a linear layer after a flatten has its
    columns permuted to the HWC stream); ``sources`` are the producers of its inputs after
    flattens are looked through; ``counter_name`` is its key in the ``counters`` port (an
    identifier made from the node name).
    """

    node: object
    sources: tuple
    in_shapes: tuple
    in_acts: tuple
    lanes: int
    counter_name: str

    def engine(self, zero_skip, chunk):
        from .add import AddEngine
        from .conv import SparseConvEngine
        from .pool import AvgPool2dEngine, MaxPool2dEngine
        from .xnor import XnorConvEngine

        node = self.node
        if isinstance(node, (ir.Conv2d, ir.Linear)) and self.in_acts[0].binary:
            return XnorConvEngine(node, self.in_shapes[0], self.in_acts[0], lanes=self.lanes)
        if isinstance(node, (ir.Conv2d, ir.Linear)):
            return SparseConvEngine(node, self.in_shapes[0], self.in_acts[0], lanes=self.lanes,
                                    zero_skip=zero_skip, chunk=chunk)
        if isinstance(node, ir.MaxPool2d):
            return MaxPool2dEngine(node, self.in_shapes[0], self.in_acts[0])
        if isinstance(node, ir.AvgPool2d):
            return AvgPool2dEngine(node, self.in_shapes[0], self.in_acts[0])
        return AddEngine(node, self.in_shapes[0], *self.in_acts)


def _input_port_names(spec):
    return ("i_stream_a", "i_stream_b") if isinstance(spec.node, ir.Add) else ("i_stream",)


class NetworkEngine(wiring.Component):
    """The dataflow top of a whole network.

    Parameters
    ----------
    layers : sequence of LayerSpec
        In topological order; sources name the graph input or earlier layers.
    input_name : str
        The graph input's node name.
    in_shape, in_act :
        Shape and encoding of the network input.
    output : str
        The layer whose tensor leaves on ``o_stream``.
    out_shape, out_act :
        Its shape and encoding.
    zero_skip : bool, chunk : int
        For the conv / linear engines.
    layer_counters : bool
        False leaves the engines' counters out of the signature; synthesis then removes them
        (the network's own counters stay).

    Members
    -------
    i_stream : In(stream.Signature(input activation))
        Input pixels, HWC, inference after inference.
    o_stream : Out(stream.Signature(output activation))
        The output tensor (integer logits for a classifier), HWC or feature order.
    o_stream_class : Out(stream.Signature(range(features)))
        Only for a flat output: its argmax, one beat per inference after its last logit.
    counters : Out(Signature)
        ``network`` (:data:`NETWORK_COUNTER_NAMES`) and, with ``layer_counters``, per layer
        under its ``counter_name``, the engine's counters
        (:data:`zeroskip.hdl.common.COUNTER_NAMES`).

    Latency is the sum of the engines' and FIFOs' along the longest path; throughput is that of
    the slowest engine.
    """

    def __init__(self, layers, *, input_name, in_shape, in_act, output, out_shape, out_act,
                 zero_skip=True, chunk=32, layer_counters=True):
        self.layers = tuple(layers)
        self.input_name, self.in_shape, self.in_act = input_name, tuple(in_shape), in_act
        self.output, self.out_shape, self.out_act = output, tuple(out_shape), out_act
        self.zero_skip, self.chunk, self.layer_counters = zero_skip, chunk, bool(layer_counters)
        self.has_class = len(self.out_shape) == 1
        counters = {"network": Out(network_counters_signature())}
        if self.layer_counters:
            counters.update({spec.counter_name: Out(counters_signature())
                             for spec in self.layers})
        members = {"i_stream": In(activation_stream(in_act)),
                   "o_stream": Out(activation_stream(out_act)),
                   "counters": Out(wiring.Signature(counters))}
        if self.has_class:
            members["o_stream_class"] = Out(stream.Signature(range(max(self.out_shape[0], 2))))
        super().__init__(members)

    def consumers(self):
        """Producer name -> list of (consumer, input port) edges; the top output is ``None``."""
        edges = {self.input_name: []}
        for spec in self.layers:
            edges[spec.node.name] = []
        for spec in self.layers:
            for source, port in zip(spec.sources, _input_port_names(spec)):
                edges[source].append((spec.node.name, port))
        edges[self.output].append((None, "o_stream"))
        return edges

    def elaborate(self, platform):
        m = Module()
        engines = {}
        for spec in self.layers:
            engine = spec.engine(self.zero_skip, self.chunk)
            m.submodules[f"layer_{spec.counter_name}"] = engines[spec.node.name] = engine
            if self.layer_counters:
                wiring.connect(m, wiring.flipped(getattr(self.counters, spec.counter_name)),
                               engine.counters)

        if self.has_class:
            m.submodules.argmax = argmax = ArgmaxEngine(self.out_shape[0], self.out_act)
            wiring.connect(m, argmax.o_stream, wiring.flipped(self.o_stream))
            wiring.connect(m, argmax.o_stream_class, wiring.flipped(self.o_stream_class))
            top_sink = argmax.i_stream
        else:
            top_sink = wiring.flipped(self.o_stream)

        def sink(consumer, port):
            return top_sink if consumer is None else getattr(engines[consumer], port)

        shapes = {self.input_name: self.in_shape}
        acts = {self.input_name: self.in_act}
        for spec in self.layers:
            shapes[spec.node.name] = _out_shape(spec)
            acts[spec.node.name] = spec.node.act if hasattr(spec.node, "act") else spec.in_acts[0]
        for producer, edges in self.consumers().items():
            source = wiring.flipped(self.i_stream) if producer == self.input_name \
                else engines[producer].o_stream
            if not edges:
                continue
            if len(edges) == 1:
                # A register slice on every link between engines: their handshakes would
                # otherwise chain into one combinational path through the whole network.
                link = StreamRegister(activation_shape(acts[producer]))
                m.submodules[f"link_{_identifier(producer)}"] = link
                wiring.connect(m, source, link.i_stream)
                wiring.connect(m, link.o_stream, sink(*edges[0]))
                continue
            shape = activation_shape(acts[producer])
            fork = StreamFork(shape, len(edges))
            m.submodules[f"fork_{_identifier(producer)}"] = fork
            wiring.connect(m, source, fork.i_stream)
            for index, edge in enumerate(edges):
                fifo = StreamFIFO(shape, math.prod(shapes[producer]))
                m.submodules[f"fifo_{_identifier(producer)}_{index}"] = fifo
                wiring.connect(m, fork.output(index), fifo.i_stream)
                wiring.connect(m, fifo.o_stream, sink(*edge))

        stages = len(self.layers) + 2
        m.submodules.network_counters = watch = NetworkCounters(
            math.prod(self.in_shape), math.prod(self.out_shape), inflight=4 * stages)
        m.d.comb += [watch.input_taken.eq(self.i_stream.valid & self.i_stream.ready),
                     watch.output_taken.eq(self.o_stream.valid & self.o_stream.ready)]
        wiring.connect(m, wiring.flipped(self.counters.network), watch.counters)
        return m


def _out_shape(spec):
    shape, _ = spec.node.infer(spec.in_shapes, spec.in_acts)
    return shape


def _identifier(name):
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name)
    return cleaned if cleaned[:1].isalpha() else f"n{cleaned}"


def counter_names(names):
    """Node names -> unique identifiers usable as signature members (``"0"`` -> ``"n0"``)."""
    result, used = {}, set()
    for name in names:
        base = candidate = _identifier(name)
        suffix = 1
        while candidate in used or candidate == "network":
            suffix += 1
            candidate = f"{base}_{suffix}"
        used.add(candidate)
        result[name] = candidate
    return result
