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


# --- group walker -------------------------------------------------------------------------------

def _expected_descriptors(step):
    from zeroskip.hdl.seq_walk import group_walker_settings  # noqa: F401 (the unit under test)
    for g in range(step.groups):
        pixels = step.group_pixels(g)
        klass = step.group_class(g) if step.bounded else pixels[0][1] >> step.class_shift
        oldest, newest = step.group_rows(g)
        yield {"base_v": step.group_base(g), "klass": klass, "out_y": pixels[0][0],
               "rowsel": step.rowsel(klass) if step.bounded else 0,
               "out_valid": (1 << len(pixels)) - 1, "ring_start": step.ring_start(oldest),
               "last": g == step.groups - 1}, newest


@pytest.mark.parametrize("net", list(seq_nets.NETS))
def test_group_walker_hands_out_every_group_once_its_rows_are_in(net):
    from zeroskip.hdl.seq_walk import GroupWalker, group_walker_settings

    graph, x, program, steps = _conv_steps(net)
    widths = Widths.of(program)
    rng = np.random.default_rng(4)
    for step in steps:
        dut = GroupWalker(widths, program.rowsels)
        expected = list(_expected_descriptors(step))
        got, rows_seen = [], []

        async def bench(ctx):
            ctx.set(dut.settings, group_walker_settings(step))
            ctx.set(dut.rows_done, 0)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            rows, in_flight = 0, []
            for _ in range(20_000):
                if len(got) == len(expected) and not in_flight:
                    break
                # Rows arrive slowly; groups finish a few cycles after they are taken.
                if rng.random() < 0.3:
                    rows += 1
                ctx.set(dut.rows_done, min(rows, 60))
                take = rng.random() < 0.6
                ctx.set(dut.o_stream.ready, take)
                done = bool(in_flight) and in_flight[0] <= 0
                ctx.set(dut.group_done, done)
                if done:
                    in_flight.pop(0)
                in_flight = [t - 1 for t in in_flight]
                await ctx.delay(1e-9)
                if ctx.get(dut.o_stream.valid) and take:
                    got.append({key: ctx.get(getattr(dut.o_stream.payload, key))
                                for key in expected[0][0]})
                    rows_seen.append(rows)
                    in_flight.append(int(rng.integers(1, 6)))
                    # The ring never runs past the oldest group in flight.
                    assert ctx.get(dut.ring_start) <= got[-1]["ring_start"]
                await ctx.tick()
            ctx.set(dut.group_done, 0)

        simulate(dut, bench)
        assert got == [d for d, _ in expected], step.node.name
        for g, ((_, newest), rows) in enumerate(zip(expected, rows_seen)):
            assert newest < rows, (step.node.name, g, newest, rows)
