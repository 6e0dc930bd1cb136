"""A whole network as one dataflow top: an engine per layer, joined by streams.

::

    i_stream -> engine -> engine -> fork -+-> FIFO -> engine -> engine -+-> add -> ... -> argmax
                                          +-> FIFO ---------------------+                 |
                                                                            o_stream (logits)
                                                                            o_stream_class

Every layer of the graph becomes its engine (:mod:`.conv`, :mod:`.pool`, :mod:`.add`), made by
the compiler (:mod:`zeroskip.compiler`) and handed over as a :class:`Stage`; a flatten costs
nothing (the compiler permutes the next linear layer's columns to the HWC stream). Every single
link goes through a :class:`~.stream.StreamRegister`, so no handshake path spans engines. A
tensor read by several layers goes through a :class:`~.stream.StreamFork`, and every branch of a
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
from .common import activation_shape, activation_stream, counters_signature, identifier
from .counters import NetworkCounters, network_counters_signature
from .stream import StreamFIFO, StreamFork, StreamRegister

__all__ = ["NetworkEngine", "Stage"]


@dataclass(frozen=True, eq=False)
class Stage:
    """One engine of the network and where its inputs come from.

    ``name`` is the tensor the engine produces (its graph node); ``sources`` the producers of
    its inputs (the graph input's name or earlier stages'), in the order of ``ports``, the
    engine's input stream members; ``counter_name`` its key in the ``counters`` port (an
    identifier); ``out_shape`` and ``out_act`` describe its output stream.
    """

    name: str
    counter_name: str
    sources: tuple
    ports: tuple
    engine: wiring.Component
    out_shape: tuple
    out_act: object


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

    Members
    -------
    i_stream : In(stream.Signature(input activation))
        Input pixels, HWC, inference after inference.
    o_stream : Out(stream.Signature(output activation))
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
                 layer_counters=True, argmax=None):
        self.stages = tuple(stages)
        self.input_name, self.in_shape, self.in_act = input_name, tuple(in_shape), in_act
        self.output, self.out_shape, self.out_act = output, tuple(out_shape), out_act
        self.layer_counters = bool(layer_counters)
        self.has_class = len(self.out_shape) == 1 if argmax is None else bool(argmax)
        if self.has_class and len(self.out_shape) != 1:
            raise ValueError(f"argmax needs a flat output, got shape {self.out_shape}")
        counters = {"network": Out(network_counters_signature())}
        if self.layer_counters:
            counters.update({stage.counter_name: Out(counters_signature())
                             for stage in self.stages})
        members = {"i_stream": In(activation_stream(in_act)),
                   "o_stream": Out(activation_stream(out_act)),
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
        for stage in self.stages:
            shapes[stage.name], acts[stage.name] = stage.out_shape, stage.out_act
        for producer, edges in self.consumers().items():
            source = wiring.flipped(self.i_stream) if producer == self.input_name \
                else engines[producer].o_stream
            if not edges:
                continue
            if len(edges) == 1:
                # A register slice on every link between engines: their handshakes would
                # otherwise chain into one combinational path through the whole network.
                link = StreamRegister(activation_shape(acts[producer]))
                m.submodules[f"link_{identifier(producer, 'n')}"] = link
                wiring.connect(m, source, link.i_stream)
                wiring.connect(m, link.o_stream, sink(*edges[0]))
                continue
            shape = activation_shape(acts[producer])
            fork = StreamFork(shape, len(edges))
            m.submodules[f"fork_{identifier(producer, 'n')}"] = fork
            wiring.connect(m, source, fork.i_stream)
            for index, edge in enumerate(edges):
                fifo = StreamFIFO(shape, math.prod(shapes[producer]))
                m.submodules[f"fifo_{identifier(producer, 'n')}_{index}"] = fifo
                wiring.connect(m, fork.output(index), fifo.i_stream)
                wiring.connect(m, fifo.o_stream, sink(*edge))

        stages = len(self.stages) + 2
        m.submodules.network_counters = watch = NetworkCounters(
            math.prod(self.in_shape), math.prod(self.out_shape), inflight=4 * stages)
        m.d.comb += [watch.input_taken.eq(self.i_stream.valid & self.i_stream.ready),
                     watch.output_taken.eq(self.o_stream.valid & self.o_stream.ready)]
        wiring.connect(m, wiring.flipped(self.counters.network), watch.counters)
        return m
