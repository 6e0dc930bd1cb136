"""The graph file: an exact, deterministic round trip, and every bad file a GraphError that says
which node and field are at fault."""

import copy
import io
import json
import random
import time
import zipfile

import numpy as np
import pytest

from zeroskip import ir, reference
from zeroskip.errors import GraphError

U8 = ir.Activation(bits=8, signed=False, scale=0.1)


def requant(channels, shared=False, act=U8):
    entries = 1 if shared else channels
    return ir.Requant(multiplier=np.full(entries, 300, np.int32),
                      shift=np.full(entries, 14, np.int32), clamp_min=max(act.qmin, -100),
                      clamp_max=act.qmax, epsilon=1)


def conv(rng, name, source, in_channels, out_channels, groups=1):
    return ir.Conv2d(
        name=name, inputs=(source,),
        weight=rng.integers(-127, 128, (out_channels, in_channels // groups, 3, 3)).astype(
            np.int8), bias=rng.integers(-999, 999, out_channels).astype(np.int32),
        weight_bits=8, weight_scale=rng.uniform(0.01, 0.1, out_channels), stride=(1, 1),
        padding=(1, 1), groups=groups, requant=requant(out_channels), act=U8)


def good_graph():
    """Every op: x -> c1 -> p -> c2(groups 4) -> a(p + c2) -> gap -> f -> fc."""
    rng = np.random.default_rng(0)
    u4, s8 = ir.Activation(bits=4, signed=False, scale=0.5), ir.Activation(8, True, 0.25)
    return ir.Graph(nodes=(
        ir.Input(name="x", inputs=(), shape=(4, 8, 8), act=U8),
        conv(rng, "c1", "x", 4, 8),
        ir.MaxPool2d(name="p", inputs=("c1",), kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
        conv(rng, "c2", "p", 8, 8, groups=4),
        ir.Add(name="a", inputs=("p", "c2"), input_multipliers=(3, 5),
               requant=requant(8, shared=True), act=U8),
        ir.AvgPool2d(name="gap", inputs=("a",), kernel=(4, 4), stride=(1, 1),
                     requant=requant(8, act=u4), act=u4),
        ir.Flatten(name="f", inputs=("gap",)),
        ir.Linear(name="fc", inputs=("f",), weight=rng.integers(-7, 8, (10, 8)).astype(np.int8),
                  bias=np.zeros(10, np.int32), weight_bits=4, weight_scale=np.full(10, 0.2),
                  requant=requant(10, act=s8), act=s8),
    ), output="fc", name="every-op")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return good_graph().save(tmp_path_factory.mktemp("ir") / "good.zsg")


def read_members(path):
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def rewrite(source, target, edit=None, replace=None, drop=()):
    """Copy a graph file, editing its JSON with ``edit(document)`` (in place), replacing members
    by name with ``replace`` (bytes or arrays) and leaving out the members in ``drop``."""
    members = read_members(source)
    document = json.loads(members[ir.GRAPH_MEMBER])
    if edit is not None:
        edit(document)
    members[ir.GRAPH_MEMBER] = json.dumps(document).encode()
    for name, data in (replace or {}).items():
        members[name] = npy(data) if isinstance(data, np.ndarray) else data
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            if name not in drop:
                archive.writestr(name, data)
    return target


def node_entry(document, name):
    return next(entry for entry in document["nodes"] if entry["name"] == name)


def setter(node, field, value):
    """An edit setting ``field`` (``"a.b"`` for nested) of ``node`` (None: the document)."""
    def edit(document):
        target = document if node is None else node_entry(document, node)
        *parents, last = field.split(".")
        for key in parents:
            target = target[key]
        target[last] = value
    return edit


def deleter(node, field):
    def edit(document):
        del node_entry(document, node)[field]
    return edit


def assert_tensors_equal(a, b):
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, ir.Requant):
        for name in ("multiplier", "shift", "clamp_min", "clamp_max", "epsilon"):
            assert_tensors_equal(getattr(a, name), getattr(b, name))
    else:
        assert a == b


# --- round trip ----------------------------------------------------------------------------------

def test_round_trip_keeps_every_field(saved):
    original, loaded = good_graph(), ir.load(saved)
    assert (loaded.name, loaded.output, loaded.version) == ("every-op", "fc", ir.IR_VERSION)
    assert [n.name for n in loaded.nodes] == [n.name for n in original.nodes]
    for before, after in zip(original.nodes, loaded.nodes):
        assert type(before) is type(after)
        for name in before.__dataclass_fields__:
            assert_tensors_equal(getattr(before, name), getattr(after, name))
    assert loaded.shapes == original.shapes and loaded.acts == original.acts
    x = np.random.default_rng(1).integers(0, 256, (2, 4, 8, 8))
    np.testing.assert_array_equal(reference.run(loaded, x), reference.run(original, x))


def test_saving_is_deterministic(saved, tmp_path):
    again = good_graph().save(tmp_path / "again.zsg")
    resaved = ir.load(saved).save(tmp_path / "resaved.zsg")
    assert saved.read_bytes() == again.read_bytes() == resaved.read_bytes()


def test_loaded_tensors_are_read_only(saved):
    with pytest.raises(ValueError):
        ir.load(saved)["c1"].weight[0, 0, 0, 0] = 1


# --- bad files: each names the node and the field ------------------------------------------------

BAD_EDITS = {
    "unknown version": (setter(None, "version", 4), None, "version", "unknown IR version 4"),
    "version true": (setter(None, "version", True), None, "version", "unknown IR version True"),
    "unknown op": (setter("c1", "op", "conv3d"), "c1", "op", "unknown op 'conv3d'"),
    "op not a string": (setter("c1", "op", ["conv2d"]), "c1", "op", "unknown op ['conv2d']"),
    "conv in-channels": (setter("x", "shape", [5, 8, 8]), "c1", "weight",
                         "weight expects 4 input channels but input 'x' has 5"),
    "add channel mismatch": (setter("a", "inputs", ["x", "c1"]), "a", "inputs",
                             "'x' (4, 8, 8) and 'c1' (8, 8, 8) differ in shape"),
    "linear unflattened": (setter("fc", "inputs", ["gap"]), "fc", "inputs",
                           "must be flat (features,), got (8, 1, 1); add a flatten node"),
    "groups not dividing": (setter("c2", "groups", 3), "c2", "groups", "3 groups must divide"),
    "weights outside bits": (setter("c1", "weight_bits", 3), "c1", "weight",
                             "values must lie in [-3, 3]"),
    "weight bits 9": (setter("c1", "weight_bits", 9), "c1", "weight_bits", "must be <= 8"),
    "weight bits 1": (setter("fc", "weight_bits", 1), "fc", "weight_bits", "must be >= 2"),
    "activation bits 0": (setter("x", "act.bits", 0), "x", "act", "bits: must be >= 1"),
    "unsigned binary activation": (setter("x", "act.bits", 1), "x", "act",
                                   "signed: a binary (1-bit) activation must be signed"),
    "clamp above range": (setter("c1", "requant.clamp_max", 256), "c1", "requant.clamp_max",
                          "must be <= 255"),
    "clamp below range": (setter("gap", "requant.clamp_min", -1), "gap", "requant.clamp_min",
                          "must be >= 0"),
    "negative epsilon": (setter("c1", "requant.epsilon", -1), "c1", "requant.epsilon",
                         "must be >= 0"),
    "zero scale": (setter("x", "act.scale", 0), "x", "act", "scale: must be a positive"),
    "negative scale": (setter("fc", "act.scale", -0.5), "fc", "act", "positive finite"),
    "cycle": (setter("c1", "inputs", ["fc"]), "c1", "inputs",
              "is part of a cycle: c1 -> fc -> f -> gap -> a -> p -> c1"),
    "duplicate name": (setter("p", "name", "c1"), "c1", "name", "duplicate node name"),
    "unknown input": (setter("c2", "inputs", ["nope"]), "c2", "inputs", "unknown node 'nope'"),
    "wrong arity": (setter("a", "inputs", ["p"]), "a", "inputs", "add takes 2 input(s)"),
    "output names no node": (setter(None, "output", "nope"), None, "output", "names no node"),
    "missing field": (deleter("c1", "stride"), "c1", "stride", "missing"),
    "unknown field": (setter("c1", "dilation", [1, 1]), "c1", "dilation",
                      "unknown field(s) ['dilation']"),
    "stride zero": (setter("c2", "stride", [0, 1]), "c2", "stride", "must be >= 1"),
    "pool kernel not a pair": (setter("p", "kernel", 3), "p", "kernel", "pair of integers"),
    "pool padding too big": (setter("p", "padding", [2, 2]), "p", "padding", "at most half"),
    "multiplier not a tensor": (setter("a", "input_multipliers", [1, 2**16]), "a",
                                "input_multipliers", "must be <= 65535"),
    "tensor reference to nothing": (setter("c1", "bias", {"tensor": "nope"}), "c1", "bias",
                                    "tensor 'nope' is missing from the file"),
    "graph name not a string": (setter(None, "name", 5), None, "name", "must be a string"),
}


@pytest.mark.parametrize("edit, node, field, message", BAD_EDITS.values(), ids=BAD_EDITS.keys())
def test_bad_json_names_node_and_field(saved, tmp_path, edit, node, field, message):
    with pytest.raises(GraphError) as error:
        ir.load(rewrite(saved, tmp_path / "bad.zsg", edit=edit))
    assert (error.value.node, error.value.field) == (node, field)
    where = ", ".join(([f"node {node!r}"] if node else []) + [f"field {field!r}"])
    assert str(error.value).startswith(where + ": ")
    assert message in str(error.value)


def npz(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


BAD_MEMBERS = {
    "weight of wrong dtype": ({"c1.weight.npy": np.zeros((8, 4, 3, 3), np.float32)}, (),
                              "c1", "weight", "tensor must have dtype int8"),
    "big-endian bias": ({"c1.bias.npy": np.zeros(8, ">i4")}, (), "c1", "bias", "int32 (<i4), "
                        "got int32 (>i4)"),
    "bias of wrong length": ({"c1.bias.npy": np.zeros(9, np.int32)}, (), "c1", "bias",
                             "tensor must have shape (8,), got (9,)"),
    "weight with an empty dimension": ({"c1.weight.npy": np.zeros((8, 4, 0, 0), np.int8)}, (),
                                       "c1", "weight", "has an empty dimension"),
    "multiplier out of range": ({"c1.requant.multiplier.npy": np.full(8, 70000, np.int32)},
                                (), "c1", "requant.multiplier", "unsigned 16-bit"),
    "shift out of range": ({"gap.requant.shift.npy": np.full(8, 63, np.int32)}, (), "gap",
                           "requant.shift", "[0, 62]"),
    "requant of wrong length": ({"fc.requant.shift.npy": np.full(3, 4, np.int32)}, (), "fc",
                                "requant.shift", "shape (10,) or (1,)"),
    "non-positive weight scale": ({"c2.weight_scale.npy": np.full(8, -0.1)}, (), "c2",
                                  "weight_scale", "positive and finite"),
    "tensor missing": ({}, ("c1.weight.npy",), "c1", "weight",
                       "tensor 'c1.weight' is missing from the file"),
    "damaged tensor header": ({"c2.bias.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i4', \n"},
                              (), "c2", "bias", "tensor 'c2.bias' is unreadable"),
    "tensor that is an archive": ({"c2.bias.npy": npz(bias=np.zeros(8, np.int32))}, (), "c2",
                                  "bias", "is an archive"),
}


@pytest.mark.parametrize("replace, drop, node, field, message", BAD_MEMBERS.values(),
                         ids=BAD_MEMBERS.keys())
def test_bad_tensors_name_node_and_field(saved, tmp_path, replace, drop, node, field, message):
    with pytest.raises(GraphError) as error:
        ir.load(rewrite(saved, tmp_path / "bad.zsg", replace=replace, drop=drop))
    assert (error.value.node, error.value.field) == (node, field)
    assert str(error.value).startswith(f"node {node!r}, field {field!r}: ")
    assert message in str(error.value)


@pytest.mark.parametrize("make, message", [
    (lambda good: bytes(random.Random(0).randrange(256) for _ in range(2000)),
     "corrupted or truncated"),
    (lambda good: good[:len(good) // 2], "corrupted or truncated"),
    (lambda good: b"", "corrupted or truncated"),
], ids=["random bytes", "cut in half", "empty"])
def test_unreadable_files(saved, tmp_path, make, message):
    path = tmp_path / "bad.zsg"
    path.write_bytes(make(saved.read_bytes()))
    with pytest.raises(GraphError, match=message):
        ir.load(path)


@pytest.mark.parametrize("graph_json, message", [
    (None, "has no graph.json"),
    (b"{not json", "graph.json is not valid JSON"),
    (b"\xff\xfe\x00", "graph.json is not valid JSON"),
    (b"[" * 100_000, "graph.json is not valid JSON"),
    (b"[]", "not a zeroskip-graph document"),
    (json.dumps({"format": "zeroskip-graph", "version": 1, "output": "x"}).encode(),
     "field 'nodes': missing"),
    (json.dumps({"format": "zeroskip-graph", "version": 1, "output": "x",
                 "nodes": [3]}).encode(), "node '#0': must be an object"),
], ids=["missing", "invalid", "not utf-8", "nested too deep", "not an object", "no nodes",
        "node not an object"])
def test_bad_graph_json_member(saved, tmp_path, graph_json, message):
    members = read_members(saved)
    path = tmp_path / "bad.zsg"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if name != ir.GRAPH_MEMBER:
                archive.writestr(name, data)
        if graph_json is not None:
            archive.writestr(ir.GRAPH_MEMBER, graph_json)
    with pytest.raises(GraphError, match=message):
        ir.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(GraphError, match="no such file") as error:
        ir.load(tmp_path / "nope.zsg")
    assert error.value.field == "path"


# --- only GraphError escapes ---------------------------------------------------------------------

JUNK = [None, True, -1, 0, 1, 2.5, float("nan"), 10**30, "", "x", "c1", [], [1], [1, 2],
        [[1]], ["x"], {}, {"a": 1}, {"tensor": "nope"}, {"tensor": "c1.weight"}]


def json_paths(value, path=()):
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else ()
    for key, child in children:
        yield from json_paths(child, path + (key,))


def test_random_json_mutations_raise_only_graph_error(saved, tmp_path):
    document = json.loads(read_members(saved)[ir.GRAPH_MEMBER])
    paths = list(json_paths(document))[1:]
    rng = random.Random(1234)
    failures = 0
    for _ in range(300):
        mutated = copy.deepcopy(document)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(paths)
            try:
                parent = mutated
                for key in path[:-1]:
                    parent = parent[key]
                if isinstance(parent, dict) and rng.random() < 0.2:
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = copy.deepcopy(rng.choice(JUNK))
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation removed or replaced this path
        try:
            ir.load(rewrite(saved, tmp_path / "fuzz.zsg", edit=lambda d: d.update(mutated)))
        except GraphError:
            failures += 1
    assert failures > 250  # nearly every mutation breaks the graph, and each one cleanly


def test_random_byte_damage_raises_only_graph_error(saved, tmp_path):
    good = saved.read_bytes()
    rng = random.Random(99)
    path = tmp_path / "damaged.zsg"
    for _ in range(300):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        try:
            ir.load(path)
        except GraphError:
            pass


# --- graphs built in memory ----------------------------------------------------------------------

def test_long_chain_listed_outputs_first():
    # Far deeper than Python's recursion limit: sorting must not recurse per node.
    chain = [ir.Input(name="x", inputs=(), shape=(4,), act=U8)]
    chain += [ir.Flatten(name=f"f{i}", inputs=(f"f{i - 1}" if i else "x",)) for i in range(3000)]
    graph = ir.Graph(nodes=tuple(reversed(chain)), output="f2999")
    assert [node.name for node in graph.nodes[:3]] == ["x", "f0", "f1"]


@pytest.mark.parametrize("order", ["outputs first", "shuffled"])
def test_a_100k_node_chain_sorts_in_linear_time(order):
    # Building the cycle message on every edge would make this quadratic (264 s in stats).
    chain = [ir.Input(name="x", inputs=(), shape=(4,), act=U8)]
    chain += [ir.Flatten(name=f"f{i}", inputs=(f"f{i - 1}" if i else "x",))
              for i in range(100_000)]
    nodes = chain[::-1] if order == "outputs first" else random.Random(0).sample(chain,
                                                                                 len(chain))
    start = time.perf_counter()
    graph = ir.Graph(nodes=tuple(nodes), output="f99999", limits=ir.Limits(nodes=100_001))
    assert time.perf_counter() - start < 20  # about 1.5 s on 2 busy cores
    assert [node.name for node in graph.nodes[:3]] == ["x", "f0", "f1"]
    assert graph["f500"].inputs == ("f499",) and graph.consumers("f500") == [graph["f501"]]


@pytest.mark.parametrize("make, node, field", [
    (lambda: ir.Graph(nodes=(ir.Input(name="x", inputs=(), shape=(4,), act=U8),
                             ir.Flatten(name="f", inputs=(["x"],))), output="f"), "f", "inputs"),
    (lambda: ir.Graph(nodes=(ir.Input(name="x", inputs=(), shape=(4,), act=U8),),
                      output=["x"]), None, "output"),
    (lambda: ir.Graph(nodes=(ir.Input(name="x", inputs=(), shape=(4,), act=U8),
                             ir.Input(name="y", inputs=(), shape=(4,), act=U8)), output="x"),
     None, "nodes"),
    (lambda: ir.Graph(nodes=(ir.Input(name="x", inputs=(), shape=(4,), act=U8),
                             ir.Linear(name="fc", inputs=("x",), weight=np.zeros((0, 4), np.int8),
                                       bias=np.zeros(0, np.int32), weight_scale=np.ones(0),
                                       requant=requant(1), act=U8)), output="fc"),
     "fc", "weight"),
], ids=["input not a name", "output not a name", "two inputs", "no output features"])
def test_bad_graphs_in_memory(make, node, field):
    with pytest.raises(GraphError) as error:
        make()
    assert (error.value.node, error.value.field) == (node, field)
