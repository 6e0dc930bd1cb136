"""A whole network as one dataflow top: an engine per layer, joined by streams.

::

    i_stream -> engine -> engine -> fork -+-> FIFO -> engine -> engine -+-> add -> ... -> argmax
                                          +-> FIFO ---------------------+                 |
                                                                            o_stream (logits)
                                                                            o_stream_class

Every layer of the graph becomes its engine (:mod:`.conv`, :mod:`.pool`, :mod:`.add`), made by
the compiler (:mod:`zeroskip.compiler`) and handed over as a :class:`Stage`; a flatten costs
nothing (the compiler permutes the next linear layer's columns to the HWC stream). A stream
carries ``W`` activations a beat, its producer's output width; where a consumer takes another
width, a :class:`~.stream.StreamWidthConverter` joins them. Every single link goes through a
:class:`~.stream.StreamRegister` (or a converter, which ends in one), so no handshake path spans
engines. A tensor read by several layers goes through a register slice and a
:class:`~.stream.StreamFork`, and every branch of a
fork gets a FIFO holding one whole tensor: then no branch can stall the fork while another still
needs input of an inference the first has finished with, so the joins (adds) never deadlock,
whatever the branches hold. A flat output also goes through :class:`~.argmax.ArgmaxEngine`,
which adds the class stream. :class:`~.counters.NetworkCounters` measures the latency and the
initiation interval in hardware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .argmax import ArgmaxEngine
from .common import (activation_shape, activation_stream, counters_signature, identifier,
                     stream_shape)
from .counters import NetworkCounters, network_counters_signature
from .stream import StreamFIFO, StreamFork, StreamRegister, StreamWidthConverter

__all__ = ["NarrowedNetwork", "NetworkEngine", "Stage"]


@dataclass(frozen=True, eq=False)
class Stage:
    """One engine of the network and where its inputs come from.

    ``name`` is the tensor the engine produces (its graph node); ``sources`` the producers of
    its inputs (the graph input's name or earlier stages'), in the order of ``ports``, the
    engine's input stream members; ``counter_name`` its key in the ``counters`` port (an
    identifier); ``out_shape`` and ``out_act`` describe its output stream, ``out_width`` its
    activations a beat; ``in_widths`` are the widths its input ports take, in the order of
    ``ports`` (all 1 when empty).
    """

    name: str
    counter_name: str
    sources: tuple
    ports: tuple
    engine: wiring.Component
    out_shape: tuple
    out_act: object
    in_widths: tuple = ()
    out_width: int = 1


class NetworkEngine(wiring.Component):
    """The dataflow top of a whole network.

    Parameters
    ----------
    stages : sequence of Stage
        In topological order; sources name the graph input or earlier stages. Each engine is
        elaborated once, so every top needs stages of its own.
    input_name : str
        The graph input's node name.
    in_shape, in_act :
        Shape and encoding of the network input.
    output : str
        The stage whose tensor leaves on ``o_stream``.
    out_shape, out_act :
        Its shape and encoding.
    layer_counters : bool
        False leaves the engines' counters out of the signature; synthesis then removes them
        (the network's own counters stay).
    argmax : bool, optional
        Give ``o_stream_class``; needs a flat output; by default, for every flat output.
    in_width : int
        Activations per beat of ``i_stream``.
    out_width : int
        Activations per beat of ``o_stream``: the output stage's ``out_width``.

    Members
    -------
    i_stream : In(stream.Signature(stream_shape(input activation, in_width)))
        Input pixels, HWC, inference after inference.
    o_stream : Out(stream.Signature(stream_shape(output activation, out_width)))
        The output tensor (integer logits for a classifier), HWC or feature order.
    o_stream_class : Out(stream.Signature(range(features)))
        Only with ``argmax``: the output's argmax, one beat per inference after its last logit.
    counters : Out(Signature)
        ``network`` (:data:`~.counters.NETWORK_COUNTER_NAMES`) and, with ``layer_counters``,
        per stage under its ``counter_name``, the engine's counters
        (:data:`zeroskip.hdl.common.COUNTER_NAMES`).

    Latency is the sum of the engines' and FIFOs' along the longest path; throughput is that of
    the slowest engine.
    """

    def __init__(self, stages, *, input_name, in_shape, in_act, output, out_shape, out_act,
                 layer_counters=True, argmax=None, in_width=1, out_width=1):
        self.stages = tuple(stages)
        self.input_name, self.in_shape, self.in_act = input_name, tuple(in_shape), in_act
        self.output, self.out_shape, self.out_act = output, tuple(out_shape), out_act
        self.in_width, self.out_width = in_width, out_width
        produced = {stage.name: stage.out_width for stage in self.stages}
        if produced.get(output, in_width) != out_width:
            raise ValueError(f"the output stage {output!r} gives {produced.get(output)} "
                             f"activations a beat, the top's out_width is {out_width}")
        self.layer_counters = bool(layer_counters)
        self.has_class = len(self.out_shape) == 1 if argmax is None else bool(argmax)
        if self.has_class and len(self.out_shape) != 1:
            raise ValueError(f"argmax needs a flat output, got shape {self.out_shape}")
        counters = {"network": Out(network_counters_signature())}
        if self.layer_counters:
            counters.update({stage.counter_name: Out(counters_signature())
                             for stage in self.stages})
        members = {"i_stream": In(activation_stream(in_act, in_width)),
                   "o_stream": Out(activation_stream(out_act, out_width)),
                   "counters": Out(wiring.Signature(counters))}
        if self.has_class:
            members["o_stream_class"] = Out(stream.Signature(range(max(self.out_shape[0], 2))))
        super().__init__(members)

    def consumers(self):
        """Producer name -> list of (consumer, input port) edges; the top output is ``None``."""
        edges = {self.input_name: []}
        for stage in self.stages:
            edges[stage.name] = []
        for stage in self.stages:
            for source, port in zip(stage.sources, stage.ports):
                edges[source].append((stage.name, port))
        edges[self.output].append((None, "o_stream"))
        return edges

    def elaborate(self, platform):
        m = Module()
        engines = {}
        for stage in self.stages:
            m.submodules[f"layer_{stage.counter_name}"] = engines[stage.name] = stage.engine
            if self.layer_counters:
                wiring.connect(m, wiring.flipped(getattr(self.counters, stage.counter_name)),
                               stage.engine.counters)

        if self.has_class:
            m.submodules.argmax = argmax = ArgmaxEngine(self.out_shape[0], self.out_act,
                                                        self.out_width)
            wiring.connect(m, argmax.o_stream, wiring.flipped(self.o_stream))
            wiring.connect(m, argmax.o_stream_class, wiring.flipped(self.o_stream_class))
            top_sink = argmax.i_stream
        else:
            top_sink = wiring.flipped(self.o_stream)

        stages = {stage.name: stage for stage in self.stages}

        def sink(consumer, port):
            """The consumer's input and the width it takes."""
            if consumer is None:
                return top_sink, self.out_width
            stage = stages[consumer]
            width = stage.in_widths[stage.ports.index(port)] if stage.in_widths else 1
            return getattr(engines[consumer], port), width

        shapes = {self.input_name: self.in_shape}
        acts = {self.input_name: self.in_act}
        widths = {self.input_name: self.in_width}
        for stage in self.stages:
            shapes[stage.name], acts[stage.name] = stage.out_shape, stage.out_act
            widths[stage.name] = stage.out_width
        for producer, edges in self.consumers().items():
            source = wiring.flipped(self.i_stream) if producer == self.input_name \
                else engines[producer].o_stream
            if not edges:
                continue
            name = identifier(producer, 'n')
            element, width = activation_shape(acts[producer]), widths[producer]
            if len(edges) == 1:
                # A register slice on every link between engines: their handshakes would
                # otherwise chain into one combinational path through the whole network.
                target, wanted = sink(*edges[0])
                link = StreamRegister(stream_shape(acts[producer], width)) if wanted == width \
                    else StreamWidthConverter(element, width, wanted)
                m.submodules[f"link_{name}"] = link
                wiring.connect(m, source, link.i_stream)
                wiring.connect(m, link.o_stream, target)
                continue
            shape = stream_shape(acts[producer], width)
            # The fork's ready is every branch FIFO's room: registered before it reaches the
            # producer's output logic.
            m.submodules[f"link_{name}"] = link = StreamRegister(shape)
            fork = StreamFork(shape, len(edges))
            m.submodules[f"fork_{name}"] = fork
            wiring.connect(m, source, link.i_stream)
            wiring.connect(m, link.o_stream, fork.i_stream)
            for index, edge in enumerate(edges):
                fifo = StreamFIFO(shape, math.prod(shapes[producer]) // width)
                m.submodules[f"fifo_{name}_{index}"] = fifo
                wiring.connect(m, fork.output(index), fifo.i_stream)
                target, wanted = sink(*edge)
                if wanted == width:
                    wiring.connect(m, fifo.o_stream, target)
                else:
                    converter = StreamWidthConverter(element, width, wanted)
                    m.submodules[f"widths_{name}_{index}"] = converter
                    wiring.connect(m, fifo.o_stream, converter.i_stream)
                    wiring.connect(m, converter.o_stream, target)

        stages = len(self.stages) + 2
        m.submodules.network_counters = watch = NetworkCounters(
            math.prod(self.in_shape) // self.in_width,
            math.prod(self.out_shape) // self.out_width, inflight=4 * stages)
        m.d.comb += [watch.input_taken.eq(self.i_stream.valid & self.i_stream.ready),
                     watch.output_taken.eq(self.o_stream.valid & self.o_stream.ready)]
        wiring.connect(m, wiring.flipped(self.counters.network), watch.counters)
        return m


class NarrowedNetwork(wiring.Component):
    """A network top whose streams carry one activation a beat, whatever its own widths: width
    converters before ``i_stream`` and after ``o_stream`` (for a board's host link).

    Parameters
    ----------
    engine : NetworkEngine (or a top with its signature)

    Members
    -------
    The engine's, with ``i_stream`` and ``o_stream`` of one activation a beat.
    """

    def __init__(self, engine):
        self.engine = engine
        members = dict(engine.signature.members)
        members["i_stream"] = In(activation_stream(engine.in_act))
        members["o_stream"] = Out(activation_stream(engine.out_act))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        engine = self.engine
        m.submodules.network = engine
        for name in engine.signature.members:
            if name not in ("i_stream", "o_stream"):  # the others leave the network
                wiring.connect(m, getattr(engine, name), wiring.flipped(getattr(self, name)))
        source = wiring.flipped(self.i_stream)
        if engine.in_width > 1:
            m.submodules.inputs = widen = StreamWidthConverter(
                activation_shape(engine.in_act), 1, engine.in_width)
            wiring.connect(m, source, widen.i_stream)
            source = widen.o_stream
        wiring.connect(m, source, engine.i_stream)
        result = engine.o_stream
        if engine.out_width > 1:
            m.submodules.outputs = narrow = StreamWidthConverter(
                activation_shape(engine.out_act), engine.out_width, 1)
            wiring.connect(m, result, narrow.i_stream)
            result = narrow.o_stream
        wiring.connect(m, result, wiring.flipped(self.o_stream))
        return m
