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


def _memories(program, graph, x, step):
    """Memories holding what a step reads, for one input (tensors dead by then may share a
    region: only the step's sources are loaded)."""
    memories = seq_reference.Memories(program)
    values = reference.run_layers(graph, x[None])
    for slot in step.sources:
        memories.load(slot, values[slot.name][0])
    return memories


def _conv_steps(name):
    rng = np.random.default_rng(11)
    graph = seq_nets.NETS[name](rng)
    x = seq_nets.inputs(rng, graph, 1)[0]
    program = seq_nets.program(graph)
    return graph, x, program, [s for s in program.steps if isinstance(s, ConvStep)]


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
@pytest.mark.parametrize("net", list(seq_nets.NETS))
def test_program_run_by_the_functional_model_gives_the_golden_outputs(net, lanes):
    rng = np.random.default_rng(11)
    graph = seq_nets.NETS[net](rng)
    x = seq_nets.inputs(rng, graph, 2)
    program = seq_nets.program(graph, lanes=lanes)
    for one, golden in zip(x, reference.run(graph, x)):
        assert np.array_equal(seq_reference.run(program, one).ravel(), golden.ravel())


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
    for step in steps:
        memories = _memories(program, graph, x, step)
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

def _first_pixel_odd(step, g):
    """Whether group ``g`` starts at an odd output pixel (the scanner's slots shift by one)."""
    oy, ox = step.group_pixels(g)[0]
    return (oy * step.out_width + ox) % 2 == 1


def _expected_descriptors(step):
    from zeroskip.hdl.seq_walk import group_walker_settings  # noqa: F401 (the unit under test)
    for g in range(step.groups):
        pixels = step.group_pixels(g)
        klass = step.group_class(g) if step.bounded else pixels[0][1] >> step.class_shift
        oldest, newest = step.group_rows(g)
        yield {"base_v": step.group_base(g), "klass": klass, "out_y": pixels[0][0],
               "rowsel": step.rowsel(klass) if step.bounded else 0,
               "out_valid": (1 << len(pixels)) - 1, "ring_start": step.ring_start(oldest),
               "last": g == step.groups - 1, "odd": int(_first_pixel_odd(step, g))}, newest


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


# --- entry walker -------------------------------------------------------------------------------

def _expected_requests(step):
    """Per chunk: the parameter writes, then the requests of every group in order."""
    from zeroskip.hdl.seq_plan import decode_entries
    weights, positions, last = decode_entries(step.entries)
    for first, count, _, _ in step.chunks:
        params = [(i, int(step.bias[first + i]), int(step.multiplier[first + i]),
                   int(step.shift[first + i])) for i in range(count)]
        mine = (step.entry_filters >= first) & (step.entry_filters < first + count)
        requests = []
        for g in range(step.groups):
            pixels = step.group_pixels(g)
            out_valid = (1 << len(pixels)) - 1
            f, previous_last = first, True
            chunk = list(zip(weights[mine], positions[mine], last[mine]))
            for index, (weight, j, closes) in enumerate(chunk):
                j = int(j)
                if step.flat:
                    v, c, region, shift8, source = step.group_base(g) + j, 0, 0, False, 0
                    inside = out_valid
                else:
                    tap_index, local = step.position(j)
                    tap = step.taps[tap_index]
                    c = (f // step.filters_per_group) * step.group_channels + local
                    v = step.group_base(g) + tap.offset
                    region = (tap.source * step.phases + tap.phase) * step.slots
                    shift8, source = tap.shift8, tap.source
                    inside = sum(1 << i for i, ok in enumerate(step.lane_inside(g, tap)) if ok)
                slot0 = (v // 8) % step.slots
                slot1 = (slot0 + 1) % step.slots
                requests.append({
                    "addr0": (region + slot0) * step.c_pad + c,
                    "addr1": (region + slot1) * step.c_pad + c, "rotate": v % 8,
                    "inside": inside, "out_valid": out_valid, "weight": int(weight),
                    "shift8": int(shift8), "signed": int(step.signed_inputs[source]),
                    "first": int(previous_last), "last": int(closes), "filter": f - first,
                    "group_last": int(index == len(chunk) - 1),
                    "odd": int(not step.out_flat and _first_pixel_odd(step, g))})
                previous_last = bool(closes)
                f += int(closes)
        yield params, requests


@pytest.mark.parametrize("net", list(seq_nets.NETS))
def test_entry_walker_requests_what_the_functional_model_reads(net):
    from zeroskip.hdl.seq_entries import EntryWalker, entry_walker_settings

    graph, x, program, steps = _conv_steps(net)
    for cache in (program.filter_cache, 8):
        program = seq_nets.program(graph, filter_cache=cache)
        widths = Widths.of(program)
        steps = [s for s in program.steps if isinstance(s, ConvStep)]
        rng = np.random.default_rng(7)
        for step in steps:
            dut = EntryWalker(widths, program)
            chunks = list(_expected_requests(step))
            descriptors = [d for d, _ in _expected_descriptors(step)]
            got_requests, got_params = [], []

            async def bench(ctx):
                ctx.set(dut.settings, entry_walker_settings(step, program))
                ctx.set(dut.drained, 1)
                ctx.set(dut.start, 1)
                await ctx.tick()
                ctx.set(dut.start, 0)
                queue = list(descriptors)
                for _ in range(200_000):
                    if ctx.get(dut.done):
                        break
                    if ctx.get(dut.restart_groups):
                        queue = list(descriptors)
                    offer = bool(queue) and rng.random() < 0.8
                    ctx.set(dut.i_stream.valid, offer)
                    if offer:
                        ctx.set(dut.i_stream.payload, queue[0])
                    take = rng.random() < 0.7
                    ctx.set(dut.o_stream.ready, take)
                    await ctx.delay(1e-9)
                    if offer and ctx.get(dut.i_stream.ready):
                        queue.pop(0)
                    if take and ctx.get(dut.o_stream.valid):
                        p = dut.o_stream.payload
                        got_requests.append({key: ctx.get(getattr(p, key))
                                             for key in chunks[0][1][0]})
                    if ctx.get(dut.params.valid):
                        p = dut.params.payload
                        got_params.append((ctx.get(p.index), ctx.get(p.bias),
                                           ctx.get(p.multiplier), ctx.get(p.shift)))
                    await ctx.tick()
                assert ctx.get(dut.done)

            async def responder(ctx):
                async for _, _, re, addr in ctx.tick().sample(dut.mem_re, dut.mem_addr):
                    if re:
                        ctx.set(dut.mem_data, int(program.weights[addr]))

            simulate(dut, bench, background=[responder])
            assert got_params == [p for params, _ in chunks for p in params], step.node.name
            expected = [r for _, requests in chunks for r in requests]
            assert len(got_requests) == len(expected), step.node.name
            for index, (got, want) in enumerate(zip(got_requests, expected)):
                assert got == want, (step.node.name, index, got, want)


# --- gather and lanes ---------------------------------------------------------------------------

def _expected_words(step, memories, depth):
    """Per chunk, group and filter: the lanes' sums (bias included) and valid lanes."""
    buffer = seq_reference.LineBuffer(step, memories, depth)
    buffer.fill_to(10_000)
    words = []
    from zeroskip.hdl.seq_plan import decode_entries
    weights, positions, last = decode_entries(step.entries)
    for first, count, _, _ in step.chunks:
        mine = (step.entry_filters >= first) & (step.entry_filters < first + count)
        for g in range(step.groups):
            lanes = len(step.group_pixels(g))
            f = first
            acc = [int(step.bias[f])] * BANKS
            for weight, j, closes in zip(weights[mine], positions[mine], last[mine]):
                operands, shift8 = seq_reference._entry_operands(step, g, int(j), f)
                for i, operand in enumerate(operands):
                    if operand is not None:
                        bank, address = step.line_address(*operand[:4])
                        value = int(buffer.data[bank, address])
                        if step.kind == "maxpool":
                            value += 128 if step.source.act.signed else 0
                            acc[i] = max(acc[i], value)
                        else:
                            acc[i] += value * int(weight) * (256 if shift8 else 1)
                if closes:
                    odd = not step.out_flat and _first_pixel_odd(step, g)
                    words.append(([acc[i] for i in range(lanes)], (1 << lanes) - 1, f - first,
                                  int(odd)))
                    f += 1
                    if f < first + count:
                        acc = [int(step.bias[f])] * BANKS
    return words, buffer


@pytest.mark.parametrize("lut_lanes", [(), (7,)], ids=["dsp", "lut7"])
@pytest.mark.parametrize("net", list(seq_nets.NETS))
def test_gather_and_lanes_close_the_sums_of_the_functional_model(net, lut_lanes):
    from amaranth.hdl import Module
    from amaranth.lib import stream, wiring
    from zeroskip.hdl.seq_entries import param_write_layout, request_layout
    from zeroskip.hdl.seq_gather import Gather
    from zeroskip.hdl.seq_lanes import Lanes, close_word, word_layout
    from zeroskip.hdl.seq_memory import LineBuffer, line_write_signature
    from zeroskip.hdl.seq_post import post_settings

    graph, x, program, steps = _conv_steps(net)
    widths = Widths.of(program)
    rng = np.random.default_rng(9)
    # The whole input in the line buffer at once (the ring's turns are the engine test's).
    whole = [s for s in steps if s.rows_cap >= (1 if s.flat else s.source.height)]
    assert whole
    for step in whole:
        memories = _memories(program, graph, x, step)
        words, buffer = _expected_words(step, memories, program.depth)
        requests = [r for _, chunk in _expected_requests(step) for r in chunk]
        params = [p for chunk, _ in _expected_requests(step) for p in chunk]
        chunk_of = [i for i, (_, chunk) in enumerate(_expected_requests(step))
                    for _ in chunk]

        class Top(wiring.Component):
            def __init__(self):
                self.gather, self.lanes = Gather(widths), Lanes(widths, lut_lanes)
                self.line = LineBuffer(program.depth)
                super().__init__({
                    "max_mode": wiring.In(1), "skip": wiring.In(1), "flat_out": wiring.In(1),
                    "i_stream": wiring.In(stream.Signature(request_layout(widths))),
                    "o_stream": wiring.Out(stream.Signature(word_layout(widths))),
                    "params": wiring.In(stream.Signature(param_write_layout(widths))),
                    "lb_write": wiring.In(line_write_signature(widths.lb_bits))})

            def elaborate(self, platform):
                m = Module()
                m.submodules.gather, m.submodules.lanes = self.gather, self.lanes
                m.submodules.line = self.line
                wiring.connect(m, wiring.flipped(self.i_stream), self.gather.i_stream)
                wiring.connect(m, self.gather.o_stream, self.lanes.i_stream)
                wiring.connect(m, self.lanes.o_stream, wiring.flipped(self.o_stream))
                wiring.connect(m, wiring.flipped(self.params), self.lanes.params)
                wiring.connect(m, wiring.flipped(self.lb_write), self.line.write)
                wiring.connect(m, self.gather.lb, self.line.read)
                m.d.comb += [self.gather.max_mode.eq(self.max_mode),
                             self.lanes.max_mode.eq(self.max_mode),
                             self.lanes.skip.eq(self.skip),
                             self.lanes.flat_out.eq(self.flat_out)]
                return m

        dut = Top()
        got = []
        settings = post_settings(step)
        closed = []
        for acc, valid, filt, odd in words:
            word = close_word(acc, valid, filt, odd, skip=settings["skip"],
                              flat_out=settings["flat_out"])
            word["acc"] = [v if word["valid"] >> i & 1 else 0
                           for i, v in enumerate(word["acc"])]
            closed.append(word)

        async def bench(ctx):
            # The line buffer as the filler leaves it.
            for bank in range(BANKS):
                for address in range(program.depth):
                    if buffer.tags[bank][address] is not None:
                        ctx.set(dut.lb_write.en, 1 << bank)
                        ctx.set(dut.lb_write.addr[bank], address)
                        ctx.set(dut.lb_write.data[bank], int(buffer.data[bank, address]) & 0xFF)
                        await ctx.tick()
            ctx.set(dut.lb_write.en, 0)
            ctx.set(dut.max_mode, step.kind == "maxpool")
            ctx.set(dut.skip, settings["skip"])
            ctx.set(dut.flat_out, settings["flat_out"])
            index, loaded = 0, -1
            for _ in range(100_000):
                if len(got) == len(words):
                    break
                if index < len(requests) and chunk_of[index] != loaded and \
                        len(got) == sum(1 for r in requests[:index] if r["last"]):
                    # A chunk's biases, once the words of the chunk before are out.
                    loaded = chunk_of[index]
                    chunk_params = list(_expected_requests(step))[loaded][0]
                    for entry, bias, _, _ in chunk_params:
                        ctx.set(dut.params.valid, 1)
                        ctx.set(dut.params.payload, {"index": entry, "bias": bias,
                                                     "multiplier": 0, "shift": 0})
                        await ctx.tick()
                    ctx.set(dut.params.valid, 0)
                offer = index < len(requests) and chunk_of[index] == loaded and \
                    rng.random() < 0.8
                ctx.set(dut.i_stream.valid, offer)
                if offer:
                    ctx.set(dut.i_stream.payload, requests[index])
                take = rng.random() < 0.5
                ctx.set(dut.o_stream.ready, take)
                await ctx.delay(1e-9)
                if offer and ctx.get(dut.i_stream.ready):
                    index += 1
                if take and ctx.get(dut.o_stream.valid):
                    p = dut.o_stream.payload
                    valid = ctx.get(p.valid)
                    # Positions past the valid ones carry sums of lanes without an output.
                    got.append({"acc": [ctx.get(p.acc[i]) if valid >> i & 1 else 0
                                        for i in range(BANKS + 1)],
                                "valid": valid, "pending": ctx.get(p.pending),
                                "last_slot": ctx.get(p.last_slot), "count": ctx.get(p.count),
                                "filter": ctx.get(p.filter)})
                await ctx.tick()

        simulate(dut, bench)
        del params
        assert len(got) == len(words), step.node.name
        for index, (g, e) in enumerate(zip(got, closed)):
            assert g == e, (step.node.name, index, g, e)


# --- scanner, requantizer, writer ----------------------------------------------------------------

@pytest.mark.parametrize("net", list(seq_nets.NETS))
def test_post_writes_the_golden_outputs(net):
    from amaranth.hdl import Module
    from amaranth.lib import stream, wiring
    from zeroskip.hdl.seq_entries import param_write_layout
    from zeroskip.hdl.seq_lanes import close_word, word_layout
    from zeroskip.hdl.seq_post import (Requant, Scanner, post_layout, post_settings,
                                       requant_widths)
    from zeroskip.hdl.seq_write import Writer, writer_layout, writer_settings

    graph, x, program, steps = _conv_steps(net)
    widths = Widths.of(program)
    values = reference.run_layers(graph, x[None])
    rng = np.random.default_rng(13)
    whole = [s for s in steps if s.rows_cap >= (1 if s.flat else s.source.height)]
    for step in whole:
        memories = _memories(program, graph, x, step)
        words, _ = _expected_words(step, memories, program.depth)
        chunks = list(_expected_requests(step))

        class Top(wiring.Component):
            def __init__(self):
                self.scanner, self.requant = Scanner(widths), Requant(widths,
                                                                      requant_widths(program))
                self.writer = Writer(widths, program.filter_cache, 256)
                super().__init__({
                    "post": wiring.In(post_layout(widths)),
                    "wset": wiring.In(writer_layout(widths)), "start": wiring.In(1),
                    "i_stream": wiring.In(stream.Signature(word_layout(widths))),
                    "params": wiring.In(stream.Signature(param_write_layout(widths))),
                    "we": wiring.Out(1), "addr": wiring.Out(widths.word_bits),
                    "data": wiring.Out(16), "mask": wiring.Out(2)})

            def elaborate(self, platform):
                m = Module()
                m.submodules.s, m.submodules.r = self.scanner, self.requant
                m.submodules.w = self.writer
                m.d.comb += [self.scanner.settings.eq(self.post),
                             self.requant.settings.eq(self.post),
                             self.writer.settings.eq(self.wset),
                             self.writer.start.eq(self.start),
                             self.requant.beats.eq(self.scanner.beats),
                             self.writer.results.eq(self.requant.results),
                             self.we.eq(self.writer.mem_we), self.addr.eq(self.writer.mem_addr),
                             self.data.eq(self.writer.mem_data),
                             self.mask.eq(self.writer.mem_mask)]
                wiring.connect(m, wiring.flipped(self.i_stream), self.scanner.i_stream)
                wiring.connect(m, wiring.flipped(self.params), self.requant.params)
                return m

        dut = Top()
        block = memories.blocks[step.target.block]

        async def bench(ctx):
            ctx.set(dut.post, post_settings(step))
            ctx.set(dut.wset, writer_settings(step, program.filter_cache))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            index = 0
            for params, requests in chunks:
                for entry, _, multiplier, shift in params:
                    ctx.set(dut.params.valid, 1)
                    ctx.set(dut.params.payload, {"index": entry, "bias": 0,
                                                 "multiplier": multiplier, "shift": shift})
                    await ctx.tick()
                ctx.set(dut.params.valid, 0)
                count = sum(r["last"] for r in requests)
                for acc, valid, filt, odd in words[index:index + count]:
                    settings = post_settings(step)
                    ctx.set(dut.i_stream.payload, close_word(
                        acc, valid, filt, odd, skip=settings["skip"],
                        flat_out=settings["flat_out"]))
                    while rng.random() < 0.3:
                        ctx.set(dut.i_stream.valid, 0)
                        await ctx.tick()
                    ctx.set(dut.i_stream.valid, 1)
                    await ctx.tick().until(dut.i_stream.ready)
                    ctx.set(dut.i_stream.valid, 0)
                index += count
                await ctx.tick().repeat(12)

        async def capture(ctx):
            async for _, _, we, addr, value, mask in ctx.tick().sample(
                    dut.we, dut.addr, dut.data, dut.mask):
                if we:
                    keep = (0xFF if mask & 1 else 0) | (0xFF00 if mask & 2 else 0)
                    block[addr] = (int(block[addr]) & ~keep) | (value & keep)

        simulate(dut, bench, background=[capture])
        expected = values[step.node.name][0].reshape(step.target.channels, -1) \
            if not step.out_flat else values[step.node.name][0].reshape(1, -1)
        assert np.array_equal(memories.tensor(step.target), expected), step.node.name
