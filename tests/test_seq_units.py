"""The sequential engine's components, each in the Amaranth simulator against the functional
model of its program (tests/seq_reference.py), with random stalls where the component has
streams."""
# amaranth: UnusedElaboratable=no

import numpy as np
import pytest

import seq_nets
import seq_reference
from hdl_sim import simulate
from zeroskip import reference
from zeroskip.hdl.seq_fill import Filler, filler_settings
from zeroskip.hdl.seq_plan import BANKS, ConvStep, Widths


def _memories(program, graph, x):
    """Memories holding every tensor of one input (as the steps before each would leave it)."""
    memories = seq_reference.Memories(program)
    values = reference.run_layers(graph, x[None])
    for name, slot in program.slots.items():
        memories.load(slot, values[name][0])
    return memories


def _conv_steps(name):
    rng = np.random.default_rng(11)
    graph = seq_nets.NETS[name](rng)
    x = seq_nets.inputs(rng, graph, 1)[0]
    program = seq_nets.program(graph)
    return graph, x, program, [s for s in program.steps if isinstance(s, ConvStep)]


async def _memory_responder(ctx, dut, memories):
    """Answers the filler's reads a cycle later, as a memory block does."""
    async for _, _, re, block, addr in ctx.tick().sample(dut.mem_re, dut.mem_block,
                                                         dut.mem_addr):
        if re:
            ctx.set(dut.mem_data, int(memories.blocks[block][addr]))


@pytest.mark.parametrize("net", list(seq_nets.NETS))
def test_filler_writes_every_row_where_the_gather_reads_it(net):
    graph, x, program, steps = _conv_steps(net)
    widths = Widths.of(program)
    memories = _memories(program, graph, x)
    for step in steps:
        dut = Filler(widths)
        model = seq_reference.LineBuffer(step, memories, program.depth)
        model.fill_to(10_000)
        got = np.full((BANKS, program.depth), -1, dtype=np.int64)
        rows = 1 if step.flat else step.source.height

        async def bench(ctx):
            ctx.set(dut.settings, filler_settings(step))
            ctx.set(dut.ring_start, 0)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            # The ring holds rows_cap rows past row 0: the filler stops there...
            for _ in range(20_000):
                await ctx.tick()
                if ctx.get(dut.rows_done) == min(rows, step.rows_cap) and \
                        not ctx.get(dut.mem_re):
                    break
            await ctx.tick().repeat(5)
            assert ctx.get(dut.rows_done) == min(rows, step.rows_cap)
            # ... and goes on once the ring moves.
            ctx.set(dut.ring_start, rows)
            for _ in range(100_000):
                await ctx.tick()
                if ctx.get(dut.done):
                    break
            assert ctx.get(dut.rows_done) == rows

        async def capture(ctx):
            async for _, _, en, *ports in ctx.tick().sample(
                    dut.lb.en, *dut.lb.addr, *dut.lb.data):
                addrs, data = ports[:BANKS], ports[BANKS:]
                for bank in range(BANKS):
                    if en >> bank & 1:
                        got[bank, addrs[bank]] = data[bank]

        async def responder(ctx):
            await _memory_responder(ctx, dut, memories)

        simulate(dut, bench, background=[capture, responder])
        written = np.array([[tag is not None for tag in bank] for bank in model.tags])
        assert np.array_equal(got[written], model.data[written] & 0xFF), step.node.name
        assert np.all(got[~written] == -1), step.node.name
