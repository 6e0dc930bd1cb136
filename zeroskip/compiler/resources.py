"""What a design takes of an FPGA part, estimated before synthesis.

RAM blocks from the design's own memories, read off the elaborated design (width, depth, read
and write ports: :func:`memories`) and mapped the way Yosys's ``memory_libmap`` maps them for
the part's family (:func:`map_memory`: the cheapest of block RAM, LUT RAM and logic by its cost
model, with a copy per read port a block cannot serve); multipliers from the engines' lanes and
requantizers; LUTs and flip-flops from per-engine costs fitted to Yosys's counts
(``benchmarks/resources_bench.py`` measures the model against Yosys; the tests check it on
small designs). LUTs are LUT4 sites: on ECP5 a carry cell fills two and a 16x4 LUT RAM four,
as ``zeroskip synth`` counts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from amaranth.hdl import Fragment, Instance
from amaranth.hdl._mem import MemoryInstance

from ..hdl.blocks import BLOCK_RAMS, fit_blocks
from ..parts import ECP5_LUTRAM_SITES

__all__ = ["MemoryUse", "Resources", "map_memory", "memories", "sequential_cells"]


@dataclass(frozen=True)
class MemoryUse:
    """One memory of a design: where it is, its shape and its ports."""

    path: str
    width: int
    depth: int
    read_ports: int
    write_ports: int
    #: An iCE40 SPRAM block instantiated as such (``SB_SPRAM256KA``).
    spram: bool = False
    #: A ROM asked for in block RAM (``rom_style = "block"``), whatever logic would cost.
    block: bool = False

    @property
    def bits(self):
        return self.width * self.depth

    @property
    def rom(self):
        return self.write_ports == 0


def elaborate(component):
    """``component`` elaborated (an Amaranth fragment), for :func:`memories` and
    :func:`netlist_features` to share."""
    return Fragment.get(component, None)


def memories(component, fragment=None):
    """Every memory of ``component`` (elaborated here unless ``fragment`` is given), depth
    first."""
    found = []

    def walk(fragment, path):
        if isinstance(fragment, Instance) and fragment.type == "SB_SPRAM256KA":
            found.append(MemoryUse(path, 16, 16384, 1, 1, spram=True))
        if isinstance(fragment, MemoryInstance):
            data = fragment._data
            found.append(MemoryUse(path, data.shape.width if hasattr(data.shape, "width")
                                   else _width(data.shape), data.depth,
                                   len(fragment._read_ports), len(fragment._write_ports),
                                   block=fragment._attrs.get("rom_style") == "block"))
        for sub, name, *_ in fragment.subfragments:
            walk(sub, f"{path}/{name}")

    walk(fragment if fragment is not None else elaborate(component), "")
    return found


def _width(shape):
    from amaranth.hdl import Shape

    return Shape.cast(shape).width


#: LUT RAM per family: (width, depth) of one primitive, its cost, the LUT4 sites it takes.
_LUTRAM = {"ecp5": ((4, 16), 4, ECP5_LUTRAM_SITES)}


#: Cost units Yosys adds to a RAM mapping (block or LUT RAM) of a RAM for its ports (fitted:
#: it keeps an 8x9 RAM and a 20x7 one in logic on iCE40, where one or two 64-unit blocks
#: would do).
RAM_PORT_EMULATION = 12


@dataclass(frozen=True)
class MemoryMapping:
    """How one memory maps: block RAMs, LUT4 sites of LUT RAM, flip-flops of logic."""

    brams: int = 0
    lutram_sites: int = 0
    ffs: int = 0
    spram: int = 0


#: Yosys's cost of one iCE40 SPRAM block (16384 x 16, one port, no initial contents).
SPRAM_COST = 64


def map_memory(memory, family, spram=False):
    """The cheapest mapping of ``memory`` on ``family`` by ``memory_libmap``'s costs; with
    ``spram`` (an iCE40UP5K, ``synth_ice40 -spram``) a one-port RAM may take SPRAM blocks."""
    if memory.spram:
        return MemoryMapping(spram=1)
    geometries, block_cost = BLOCK_RAMS[family]
    # A block serves one read beside a write; without a write an ECP5 block reads on both ports.
    ports_per_block = 2 if family == "ecp5" and memory.rom else 1
    copies = math.ceil(max(memory.read_ports, 1) / ports_per_block)
    # As logic: a ROM becomes LUTs (a sixteenth of a cost unit a bit), a RAM flip-flops. On a
    # tie Yosys keeps logic, and takes a block RAM before LUT RAM.
    options = [(memory.bits / 16, MemoryMapping()) if memory.rom else
               (memory.bits, MemoryMapping(ffs=memory.bits))]
    blocks = fit_blocks(memory.width, memory.depth, geometries) * copies
    if memory.block and memory.rom:
        return MemoryMapping(brams=blocks)
    # A RAM's ports cost Yosys's emulation score besides its primitives (about six points at
    # two units each: the read port beside the write port, its transparency).
    emulation = 0 if memory.rom else RAM_PORT_EMULATION
    options.append((blocks * block_cost + emulation, MemoryMapping(brams=blocks)))
    if family in _LUTRAM:
        (w, d), cost, sites = _LUTRAM[family]
        count = math.ceil(memory.width / w) * math.ceil(memory.depth / d) * \
            max(memory.read_ports, 1)
        options.append((count * cost + emulation, MemoryMapping(lutram_sites=count * sites)))
    if spram and not memory.rom and memory.read_ports == 1 and memory.write_ports == 1:
        count = math.ceil(memory.width / 16) * math.ceil(memory.depth / 16384)
        # On a tie the block RAM stays (it comes first).
        options.append((count * SPRAM_COST + emulation + 0.5, MemoryMapping(spram=count)))
    return min(options, key=lambda option: option[0])[1]


@dataclass
class Resources:
    """LUT4 sites, flip-flops, RAM blocks, DSPs and SPRAMs, with a breakdown by part of the
    design (``parts``: name -> dict of the same)."""

    luts: int = 0
    ffs: int = 0
    brams: int = 0
    dsps: int = 0
    spram: int = 0
    parts: dict = field(default_factory=dict)

    def add(self, name, **counts):
        entry = self.parts.setdefault(name, {"luts": 0, "ffs": 0, "brams": 0, "dsps": 0,
                                             "spram": 0})
        for key, value in counts.items():
            value = int(round(value))
            entry[key] += value
            setattr(self, key, getattr(self, key) + value)

    def as_dict(self):
        return {"luts": self.luts, "ffs": self.ffs, "brams": self.brams, "dsps": self.dsps,
                "spram": self.spram}

    def over(self, capacity, share=1.0):
        """``{resource: used / available}`` of the resources above ``share`` of
        ``capacity`` (a number, or one per resource: 1 where it names none)."""
        shares = share if isinstance(share, dict) else dict.fromkeys(self.as_dict(), share)
        return {key: used / capacity[key] for key, used in self.as_dict().items()
                if used > shares.get(key, 1.0) * capacity.get(key, 0)}


# --- logic ---------------------------------------------------------------------------------------

def netlist_features(component, fragment=None):
    """Bits of each kind of cell in ``component``'s Amaranth netlist, per module path.

    The netlist is what Amaranth hands to Yosys: operators (``+``, ``-``, comparisons, muxes,
    shifts, multiplies), decoders (``Matches``), register files (``FlipFlop``), assignments.
    Yosys's LUT and flip-flop counts are near linear in these (:data:`LOGIC_MODEL`).
    """
    from amaranth.hdl import _ast, _ir, _nir
    from amaranth.lib import wiring

    ports = {}
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, _ast.ValueCastable):
            value = value.as_value()
        direction = _ir.PortDirection.Input if member.flow == wiring.In else \
            _ir.PortDirection.Output
        ports["__".join(map(str, path))] = (value, direction)
    # build_netlist without its checks of combinational cycles and of ports (Verilog
    # conversion makes them; counting cells needs only the cells): a third of its time.
    design = (fragment if fragment is not None else elaborate(component)).prepare(
        ports=ports, hierarchy=("top",))
    netlist = _nir.Netlist()
    _ir._emit_netlist(netlist, design, all_undef_to_ff=False)
    netlist.resolve_all_nets()
    features = {}
    for cell in netlist.cells:
        if not hasattr(cell, "module_idx"):
            continue
        path = netlist.modules[cell.module_idx].name
        module = ".".join(path)
        found = _cell_bits(cell, netlist)
        counts = features.setdefault(module, {})
        # A registered multiply's registers are its DSP block's (zeroskip.hdl.dsp): an
        # SB_MAC16's as synth_ice40 -dsp packs them, a MULT18X18D's as the ECP5 flow sets it.
        in_dsp = path[-1].startswith("dsp_product")
        for kind, bits in zip(found[::2], found[1::2]):
            if kind:
                kind = "dsp_ff" if in_dsp and kind == "ff" else kind
                counts[kind] = counts.get(kind, 0) + bits
    return features


#: Operators by how Yosys builds them: carry chains, comparisons, wide gates, muxes.
_KINDS = {"+": "add", "-": "add", "u<": "compare", "u>": "compare", "u<=": "compare",
          "u>=": "compare", "s<": "compare", "s>": "compare", "s<=": "compare",
          "s>=": "compare", "==": "equal", "!=": "equal", "m": "mux", "&": "gate", "|": "gate",
          "^": "gate", "~": "gate", "r&": "reduce", "r|": "reduce", "r^": "reduce",
          "<<": "shift", ">>": "shift", "u>>": "shift", "s>>": "shift", "*": "multiply"}


def _significant(value, netlist):
    """Bits of a netlist value without its sign extension and its top zeros (a right shift by
    a constant drops as many)."""
    from amaranth.hdl import _nir

    if value.is_const:
        return max(_constant(value).bit_length(), 1)
    nets, zero = list(value), _nir.Net.from_const(0)
    width = len(nets)
    while width > 1 and (nets[width - 1] == nets[width - 2] or nets[width - 1] == zero):
        width -= 1
    source = netlist.cells[nets[0].cell] if not nets[0].is_const else None
    if type(source).__name__ == "Operator" and source.operator in ("s>>", "u>>") and \
            source.inputs[1].is_const and all(net.cell == nets[0].cell for net in nets[:width]):
        width = min(width, max(_significant(source.inputs[0], netlist) -
                               _constant(source.inputs[1]), 1))
    return width


def _constant(value):
    from amaranth.hdl import _nir

    one = _nir.Net.from_const(1)
    return sum(1 << index for index, net in enumerate(value) if net == one)


def _multiply(a, b, netlist):
    """A multiply as Yosys maps it: by a constant power of two a shift, else a DSP block once
    both operands have two bits or more (``mul2dsp``), as many blocks as it takes 18x18 ones
    (ECP5: ``dsp``) or 16x16 ones with a product of 11 bits or more (iCE40: ``dsp16``)."""
    for value in (a, b):
        if value.is_const:
            constant = _constant(value)
            if constant & (constant - 1) == 0:
                return "shift", len(a) + len(b)
    wa, wb = _significant(a, netlist), _significant(b, netlist)
    if min(wa, wb) < 2:
        return "gate", wa + wb
    ecp5 = math.ceil(wa / 18) * math.ceil(wb / 18)
    ice40 = math.ceil(wa / 16) * math.ceil(wb / 16) if wa + wb >= 11 else 0
    return "dsp", ecp5, "dsp16", ice40, "dsp_bits", wa * wb


def _cell_bits(cell, netlist):
    name = type(cell).__name__
    if name == "Operator":
        kind = _KINDS.get(cell.operator, "gate")
        width = max((len(value) for value in cell.inputs), default=cell.width)
        if kind == "multiply":
            return _multiply(*cell.inputs, netlist)
        return kind, width
    if name == "FlipFlop":
        return "ff", len(cell.data)
    if name == "Matches":
        return "match", len(cell.value) * max(len(cell.patterns), 1)
    if name == "AssignmentList":
        return "assign", len(cell.default) if hasattr(cell, "default") else 1
    if name == "Part":
        return "part", len(cell.value)
    return None, 0


#: LUT4 sites and flip-flops per bit of each netlist feature, per family: least squares
#: (non-negative) on Yosys's per-module counts of the designs in
#: ``benchmarks/resources_bench.py``. LUT RAM and RAM blocks come from :func:`map_memory`.
LOGIC_MODEL = {
    "ecp5": {"luts": {"add": 0.1777, "compare": 1.1639, "equal": 0.7511, "mux": 1.4873,
                      "reduce": 3.9146, "shift": 0.5145, "part": 4.6509, "rom_logic": 0.0461},
             "ffs": {"ff": 0.9562}},
    "ice40": {"luts": {"add": 0.1586, "mux": 2.4069, "gate": 0.0909, "rom_logic": 0.1898,
                       "ram_logic": 2.3425},
              "ffs": {"ff": 0.9591, "ram_logic": 1.1341}},
}


#: The same for the sequential engine (``benchmarks/resources_bench.py --sequential``), fitted
#: on its modules synthesized apart (the step's settings are constants Yosys carries into the
#: units only when flattened). Its per-lane logic falls short (:func:`sequential_cells`).
LOGIC_MODEL_SEQUENTIAL = {
    "ecp5": {"luts": {"add": 0.345, "equal": 0.2046, "mux": 0.2024, "gate": 1.3262,
                      "reduce": 30.8331, "match": 2.4426, "rom_logic": 0.038},
             "ffs": {"ff": 0.7398}},
    "ice40": {"luts": {"add": 0.1836, "mux": 0.1305, "gate": 1.519, "reduce": 15.5147,
                       "shift": 0.1909, "match": 1.7677, "assign": 0.0848, "rom_logic": 0.0284,
                       "ram_logic": 3.0147},
              "ffs": {"ff": 0.6987, "ram_logic": 1.8328}},
}


def sequential_cells(resources):
    """Estimated iCE40 logic cells of a sequential engine whose :func:`estimate` is
    ``resources``: its LUTs and half its flip-flops (a cell holds a LUT4 and a flip-flop, and
    nextpnr puts a flip-flop beside a LUT that does not drive it only sometimes).

    The model errs by net more than by lanes: its units' logic is counted for every setting,
    where Yosys drops what a net's steps never use (the autoencoder's filler: 757 LUTs by the
    model, 253 flattened), and it undercounts the lanes' and the gather's logic by about 130
    LUTs a lane. Against the UP5K designs of ``benchmarks/results/sequential.json``
    (``lane_runs``: four nets at 1 to 8 lanes) it still orders them by what places: every
    design at 4,700 or fewer (89 % of the cells, :data:`~.target.SEQUENTIAL_CELLS_PLACEABLE`)
    placed and routed with at least 10 % of the cells left; of those above it, ResNet-8 at 2
    and 4 lanes and the autoencoder at 8 placed (90, 99 and 92 % of the cells), ResNet-8, the
    DS-CNN and the digits-shaped net at 8 lanes did not.
    """
    return round(resources.luts + resources.ffs / 2)


def module_features(component, family, spram=False):
    """Per module: its netlist features (:func:`netlist_features`), the bits of its memories
    that map to logic (``rom_logic``, ``ram_logic``), its RAM blocks (``brams``) and LUT RAM
    sites (``lutram_sites``)."""
    fragment = elaborate(component)
    found = memories(component, fragment)
    features = {module: dict(counts) for module, counts in
                netlist_features(component, fragment).items()}
    for memory in found:
        module = ".".join(["top", *memory.path.strip("/").split("/")[:-1]])
        _add_memory(features.setdefault(module, {}), memory, family, spram)
    return features


def _add_memory(features, memory, family, spram=False):
    """Count ``memory`` into ``features`` as it maps on ``family`` (``spram``: see
    :func:`map_memory`): its RAM blocks, LUT RAM sites and SPRAMs, or its bits as logic."""
    mapping = map_memory(memory, family, spram)
    for key, value in (("brams", mapping.brams), ("lutram_sites", mapping.lutram_sites),
                       ("spram", mapping.spram)):
        features[key] = features.get(key, 0) + value
    if not mapping.brams and not mapping.lutram_sites and not mapping.spram:
        key = "rom_logic" if memory.rom else "ram_logic"
        features[key] = features.get(key, 0) + memory.bits


#: LUT4 sites of a multiplier built of logic, per bit of its product (a part without DSPs).
MULTIPLIER_LUTS_PER_BIT = 1.2


def _counts(features, family, dsps_available, model=None):
    """LUTs, FFs, RAM blocks, DSPs and SPRAMs from one set of features."""
    luts, ffs = _logic(features, family, model)
    dsps = features.get("dsp" if family == "ecp5" else "dsp16", 0)
    if not dsps_available:
        luts, dsps = luts + MULTIPLIER_LUTS_PER_BIT * features.get("dsp_bits", 0), 0
    return {"luts": luts + features.get("lutram_sites", 0), "ffs": ffs,
            "brams": features.get("brams", 0), "dsps": dsps, "spram": features.get("spram", 0)}


def component_resources(component, family, dsps_available=True, spram=False, model=None):
    """:class:`Resources` of one component (elaborated here), by module; without DSPs
    (``dsps_available`` false) multipliers are counted as logic; ``spram``: one-port RAMs may
    take SPRAM blocks (:func:`map_memory`); ``model``: the logic coefficients
    (:data:`LOGIC_MODEL` unless given)."""
    resources = Resources()
    for module, features in module_features(component, family, spram).items():
        resources.add(module, **_counts(features, family, dsps_available, model))
    return resources


class _Placeholder:
    """An engine's place in the network top when only the network's own parts are counted:
    the same signature, no logic."""

    def __new__(cls, signature):
        from amaranth.hdl import Module
        from amaranth.lib import wiring

        class Placeholder(wiring.Component):
            def elaborate(self, platform):
                return Module()

        return Placeholder(signature)


def _logic(features, family, model=None):
    logic = (model or LOGIC_MODEL)[family]
    return (sum(features.get(k, 0) * c for k, c in logic["luts"].items()),
            sum(features.get(k, 0) * c for k, c in logic["ffs"].items()))


def _sum_features(per_module):
    total = {}
    for counts in per_module.values():
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return total


def _layer_counts(architecture, spec, family, cache, dsps_available):
    """LUTs, FFs, RAM blocks and DSPs of one pipeline engine.

    Its logic grows by the same amount with every lane (each lane its own examiner, issuer and
    multiplier): counted at one and two lanes, and the line through them; its memories, whose
    sizes do not follow the lanes so simply, are counted at the lanes themselves."""
    layout = getattr(architecture, "layouts", {}).get(spec.name)
    layout = layout and (layout[0], tuple(layout[1]), layout[2])
    base = ("logic", family, spec.name, architecture.chunk, architecture.zero_skip, layout,
            getattr(architecture, "tile_slots", None))
    if base not in cache:
        points = []
        for lanes in sorted({1, min(2, spec.node.out_channels)} if spec.has_weights else {0}):
            try:
                engine = architecture.layer_engine(replace(spec, lanes=lanes))
            except ValueError:  # a pack wider than these lanes give: counted at its own
                points = [(spec.lanes, None)]
                break
            fragment = elaborate(engine)
            points.append((lanes, _sum_features(netlist_features(engine, fragment))))
        if points[0][1] is None:
            engine = architecture.layer_engine(spec)
            points = [(spec.lanes, _sum_features(netlist_features(engine, elaborate(engine))))]
        cache[base] = points
    points = cache[base]
    (l1, f1), (l2, f2) = points[0], points[-1]
    step = (spec.lanes - l1) / (l2 - l1) if l2 != l1 else 0
    features = {key: f1.get(key, 0) + step * (f2.get(key, 0) - f1.get(key, 0))
                for key in set(f1) | set(f2)}
    key = ("memories", family, spec.name, architecture.chunk, architecture.zero_skip, layout,
           spec.lanes)
    if key not in cache:
        engine = architecture.layer_engine(spec)
        cache[key] = (memories(engine), engine.signature)
    found, signature = cache[key]
    for memory in found:
        _add_memory(features, memory, family)
    return _counts(features, family, dsps_available), signature


def estimate(architecture, part, cache=None):
    """Estimated :class:`Resources` of ``architecture``'s design on ``part``.

    A pipeline is counted engine by engine, plus the network's own parts (links, forks, FIFOs,
    argmax, counters) counted with the engines left out; any other architecture as one
    component. ``cache`` (a dict) keeps the engines' counts between estimates of designs of the
    same graph, which share them wherever a layer's lanes and the chunk agree.
    """
    cache = {} if cache is None else cache
    family, dsps_available = part.family, part.capacity["dsps"] > 0
    if not hasattr(architecture, "layer_engine"):
        return component_resources(architecture.engine(), family, dsps_available,
                                   part.capacity.get("spram", 0) > 0,
                                   LOGIC_MODEL_SEQUENTIAL)
    from ..hdl.network import NetworkEngine, Stage
    from .layers import producer

    total = Resources()
    stages = []
    for spec in architecture.layers:
        counts, signature = _layer_counts(architecture, spec, family, cache, dsps_available)
        total.add(f"layer {spec.name}", **counts)
        in_widths, out_width = (), 1
        if spec.name in getattr(architecture, "layouts", {}):
            _, in_widths, out_width = architecture.layouts[spec.name]
        stages.append(Stage(spec.name, spec.counter_name, spec.sources, spec.ports,
                            _Placeholder(signature), spec.out_shape, spec.out_act,
                            tuple(in_widths), out_width))
    graph = architecture.graph
    network = NetworkEngine(stages, input_name=graph.input.name, in_shape=architecture.in_shape,
                            in_act=architecture.in_act,
                            output=producer(graph, graph.output),
                            out_shape=architecture.out_shape, out_act=architecture.out_act,
                            layer_counters=architecture.layer_counters,
                            argmax=architecture.argmax,
                            in_width=getattr(architecture, "in_width", 1),
                            out_width=getattr(architecture, "out_width", 1))
    for module_counts in component_resources(network, family, dsps_available).parts.values():
        total.add("network", **module_counts)
    return total
