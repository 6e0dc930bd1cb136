"""The golden integer model against slow, obviously correct loops (``ref_*``) and torch.

Every ``ref_*`` function below is a direct transcription of the ir.py module docstring in plain
Python integers, one output element at a time; the model under test must match it exactly.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zeroskip import ir, reference
from zeroskip.errors import ZeroskipError

U8 = ir.Activation(bits=8, signed=False, scale=0.1)
S8 = ir.Activation(bits=8, signed=True, scale=0.1)


# --- slow references -----------------------------------------------------------------------------

def ref_round_half_up(value, shift):
    """``value / 2**shift`` rounded to the nearest integer, ties towards +infinity."""
    return math.floor(Fraction(value, 2**shift) + Fraction(1, 2))


def ref_requantize(acc, requant, channel_axis=1):
    out = np.empty(acc.shape, dtype=np.int64)
    for index in np.ndindex(*acc.shape):
        channel = index[channel_axis] if requant.multiplier.size > 1 else 0
        shift_channel = index[channel_axis] if requant.shift.size > 1 else 0
        value = int(acc[index]) * int(requant.multiplier[channel])
        y = ref_round_half_up(value, int(requant.shift[shift_channel]))
        y = min(max(y, requant.clamp_min), requant.clamp_max)
        out[index] = 0 if abs(y) <= requant.epsilon else y
    return out


def ref_conv2d_accumulate(x, weight, bias, stride, padding, groups):
    n, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h = (height + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kw) // stride[1] + 1
    group_out = out_channels // groups
    acc = np.zeros((n, out_channels, out_h, out_w), dtype=np.int64)
    for b, o, i, j in np.ndindex(n, out_channels, out_h, out_w):
        total = int(bias[o])
        for c, a, d in np.ndindex(group_channels, kh, kw):
            row, col = i * stride[0] + a - padding[0], j * stride[1] + d - padding[1]
            if 0 <= row < height and 0 <= col < width:
                total += int(weight[o, c, a, d]) * int(x[b, (o // group_out) * group_channels + c,
                                                         row, col])
        acc[b, o, i, j] = total
    return acc


def ref_conv2d_pairs(x, weight, stride, padding, groups):
    """(dense pairs, pairs with both operands nonzero), counted one pair at a time."""
    n, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h = (height + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kw) // stride[1] + 1
    group_out = out_channels // groups
    dense = effective = 0
    for b, o, i, j in np.ndindex(n, out_channels, out_h, out_w):
        for c, a, d in np.ndindex(group_channels, kh, kw):
            dense += 1
            row, col = i * stride[0] + a - padding[0], j * stride[1] + d - padding[1]
            inside = 0 <= row < height and 0 <= col < width
            if inside and weight[o, c, a, d] != 0 and \
                    x[b, (o // group_out) * group_channels + c, row, col] != 0:
                effective += 1
    return dense, effective


def ref_linear_accumulate(x, weight, bias):
    return np.array([[int(bias[o]) + sum(int(weight[o, k]) * int(x[b, k])
                                         for k in range(x.shape[1]))
                      for o in range(weight.shape[0])] for b in range(x.shape[0])],
                    dtype=np.int64)


def ref_pool(x, kernel, stride, padding, pad_value, reduce):
    n, channels, height, width = x.shape
    out_h = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
    out = np.empty((n, channels, out_h, out_w), dtype=np.int64)
    for b, c, i, j in np.ndindex(n, channels, out_h, out_w):
        window = []
        for a, d in np.ndindex(*kernel):
            row, col = i * stride[0] + a - padding[0], j * stride[1] + d - padding[1]
            inside = 0 <= row < height and 0 <= col < width
            window.append(int(x[b, c, row, col]) if inside else pad_value)
        out[b, c, i, j] = reduce(window)
    return out


def as_double(array):
    """A float64 torch tensor of an integer array (a copy: IR tensors are read-only)."""
    return torch.tensor(np.asarray(array), dtype=torch.float64)


# --- builders ------------------------------------------------------------------------------------

def make_requant(rng, channels, act, *, shared=False, epsilon=0, shift_low=0):
    entries = 1 if shared else channels
    return ir.Requant(multiplier=rng.integers(0, 2**16, entries).astype(np.int32),
                      shift=rng.integers(shift_low, 24, entries).astype(np.int32),
                      clamp_min=act.qmin, clamp_max=act.qmax, epsilon=epsilon)


def sparse_weight(rng, shape, bits=8, zero_fraction=0.5):
    low, high = ir.weight_range(bits)
    weight = rng.integers(low, high + 1, shape)
    weight[rng.random(shape) < zero_fraction] = 0
    return weight.astype(np.int8)


def sparse_input(rng, shape, act=U8, zero_fraction=0.4):
    x = rng.integers(act.qmin, act.qmax + 1, shape)
    x[rng.random(shape) < zero_fraction] = 0
    return x


def make_conv(rng, name, source, in_channels, out_channels, kernel=(3, 3), stride=(1, 1),
              padding=(0, 0), groups=1, act=U8, shared=False, epsilon=0):
    return ir.Conv2d(
        name=name, inputs=(source,),
        weight=sparse_weight(rng, (out_channels, in_channels // groups) + tuple(kernel)),
        bias=rng.integers(-5000, 5000, out_channels).astype(np.int32), weight_bits=8,
        weight_scale=np.full(out_channels, 0.01), stride=stride, padding=padding, groups=groups,
        requant=make_requant(rng, out_channels, act, shared=shared, epsilon=epsilon,
                             shift_low=8), act=act)


def make_linear(rng, name, source, in_features, out_features, act=U8):
    return ir.Linear(
        name=name, inputs=(source,), weight=sparse_weight(rng, (out_features, in_features)),
        bias=rng.integers(-5000, 5000, out_features).astype(np.int32), weight_bits=8,
        weight_scale=np.full(out_features, 0.01),
        requant=make_requant(rng, out_features, act, shift_low=8), act=act)


def single_node_graph(node, input_shape, input_act=U8):
    return ir.Graph(nodes=(ir.Input(name="x", inputs=(), shape=input_shape, act=input_act),
                           node), output=node.name)


CONV_CASES = {
    # name: (input shape without batch, out channels, kernel, stride, padding, groups)
    "3x3": ((3, 6, 6), 4, (3, 3), (1, 1), (0, 0), 1),
    "3x3-padded": ((3, 6, 6), 4, (3, 3), (1, 1), (1, 1), 1),
    "stride-2-padded": ((4, 7, 7), 5, (3, 3), (2, 2), (1, 1), 1),
    "rectangular": ((2, 7, 5), 3, (5, 3), (2, 1), (2, 0), 1),
    "pointwise": ((6, 4, 4), 3, (1, 1), (1, 1), (0, 0), 1),
    "groups-2": ((4, 6, 6), 6, (3, 3), (1, 1), (1, 1), 2),
    "depthwise": ((5, 6, 6), 5, (3, 3), (1, 1), (1, 1), 5),
    "depthwise-multiplier-2-stride-2": ((3, 7, 7), 6, (3, 3), (2, 2), (1, 1), 3),
}


# --- requantization ------------------------------------------------------------------------------

@pytest.mark.parametrize("acc, multiplier, shift, expected", [
    (-5, 1, 1, -2),   # -2.5: ties go up, towards +infinity, also for negative values
    (5, 1, 1, 3),     # 2.5
    (-3, 1, 1, -1),   # -1.5
    (3, 1, 1, 2),     # 1.5
    (-1, 1, 1, 0),    # -0.5
    (1, 1, 1, 1),     # 0.5
    (-7, 1, 2, -2),   # -1.75: not a tie, nearest
    (-6, 1, 2, -1),   # -1.5
    (10, 3, 2, 8),    # 7.5
    (-10, 3, 2, -7),  # -7.5
    (7, 3, 0, 21),    # shift 0: no rounding at all
    (-7, 3, 0, -21),
])
def test_requantize_rounds_half_up(acc, multiplier, shift, expected):
    requant = ir.Requant(multiplier=np.array([multiplier], np.int32),
                         shift=np.array([shift], np.int32), clamp_min=-128, clamp_max=127)
    y = reference.requantize(np.array([[acc]]), requant)
    assert y.dtype == np.int64 and y.tolist() == [[expected]]
    assert ref_requantize(np.array([[acc]]), requant).tolist() == [[expected]]


def test_requantize_clamps_then_prunes_small_values():
    requant = ir.Requant(multiplier=np.array([1], np.int32), shift=np.array([0], np.int32),
                         clamp_min=-2, clamp_max=5, epsilon=2)
    acc = np.array([[-9, -3, -2, -1, 0, 1, 2, 3, 5, 6, 99]])
    # Clamp first: -9 and -3 become -2, which epsilon 2 then zeroes; 6 and 99 become 5.
    assert reference.requantize(acc, requant).tolist() == [[0, 0, 0, 0, 0, 0, 0, 3, 5, 5, 5]]


def test_requantize_without_epsilon_keeps_small_values():
    requant = ir.Requant(multiplier=np.array([1], np.int32), shift=np.array([0], np.int32),
                         clamp_min=-128, clamp_max=127, epsilon=0)
    acc = np.array([[-1, 0, 1]])
    assert reference.requantize(acc, requant).tolist() == [[-1, 0, 1]]


@pytest.mark.parametrize("shared", [False, True], ids=["per-channel", "shared"])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_requantize_matches_ref(shared, channel_axis):
    rng = np.random.default_rng(1)
    acc = rng.integers(-2**22, 2**22, (3, 5, 4))
    channels = acc.shape[channel_axis]
    requant = make_requant(rng, channels, S8, shared=shared, epsilon=3)
    requant = ir.Requant(multiplier=requant.multiplier,
                         shift=np.where(np.arange(requant.shift.size) == 0, 0,
                                        requant.shift).astype(np.int32),  # include shift 0
                         clamp_min=-100, clamp_max=90, epsilon=3)
    expected = ref_requantize(acc, requant, channel_axis % acc.ndim)
    np.testing.assert_array_equal(reference.requantize(acc, requant, channel_axis), expected)


def test_requantize_shared_entry_equals_repeated_entries():
    rng = np.random.default_rng(2)
    acc = rng.integers(-10**6, 10**6, (2, 4, 3, 3))
    shared = ir.Requant(multiplier=np.array([1234], np.int32), shift=np.array([11], np.int32),
                        clamp_min=-128, clamp_max=127)
    repeated = ir.Requant(multiplier=np.full(4, 1234, np.int32),
                          shift=np.full(4, 11, np.int32), clamp_min=-128, clamp_max=127)
    np.testing.assert_array_equal(reference.requantize(acc, shared),
                                  reference.requantize(acc, repeated))


def test_requantize_leaves_its_input_alone():
    acc = np.array([[100, -100]])
    requant = ir.Requant(multiplier=np.array([1], np.int32), shift=np.array([3], np.int32),
                         clamp_min=-128, clamp_max=127)
    reference.requantize(acc, requant)
    assert acc.tolist() == [[100, -100]]


@pytest.mark.parametrize("acc, channel_axis, message", [
    (np.array([[1.5]]), 1, "integer array"),
    (np.array([[True]]), 1, "integer array"),
    (np.zeros((2, 3), np.int64), 1, "3 channels"),
    (np.zeros((2, 4), np.int64), 2, "channel_axis 2"),
    (np.array([[2**50, 0, 0, 0]]), 1, "overflows int64"),
])
def test_requantize_rejects_bad_accumulators(acc, channel_axis, message):
    requant = ir.Requant(multiplier=np.full(4, 2**15, np.int32), shift=np.full(4, 4, np.int32),
                         clamp_min=-128, clamp_max=127)
    with pytest.raises(ZeroskipError, match=message):
        reference.requantize(acc, requant, channel_axis)


# --- conv2d and linear ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv2d_accumulate_matches_ref_and_torch(case):
    shape, out_channels, kernel, stride, padding, groups = case
    rng = np.random.default_rng(3)
    x = sparse_input(rng, (2,) + shape)
    weight = sparse_weight(rng, (out_channels, shape[0] // groups) + kernel)
    bias = rng.integers(-1000, 1000, out_channels)
    acc = reference.conv2d_accumulate(x, weight, bias, stride=stride, padding=padding,
                                      groups=groups)
    assert acc.dtype == np.int64
    np.testing.assert_array_equal(
        acc, ref_conv2d_accumulate(x, weight, bias, stride, padding, groups))
    # torch in float64 is exact here: every partial sum is far below 2**53.
    torch_acc = F.conv2d(as_double(x), as_double(weight), as_double(bias), stride=stride,
                         padding=padding, groups=groups)
    np.testing.assert_array_equal(acc, torch_acc.numpy().astype(np.int64))


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv2d_node_matches_ref(case):
    shape, out_channels, kernel, stride, padding, groups = case
    rng = np.random.default_rng(4)
    node = make_conv(rng, "conv", "x", shape[0], out_channels, kernel, stride, padding, groups,
                     act=S8, shared=out_channels % 2 == 1, epsilon=1)
    x = sparse_input(rng, (3,) + shape)
    expected = ref_requantize(ref_conv2d_accumulate(x, node.weight, node.bias, stride, padding,
                                                    groups), node.requant)
    np.testing.assert_array_equal(reference.conv2d(node, x), expected)
    np.testing.assert_array_equal(reference.run(single_node_graph(node, shape), x), expected)


def test_linear_matches_ref_and_torch():
    rng = np.random.default_rng(5)
    node = make_linear(rng, "fc", "x", 13, 7, act=S8)
    x = sparse_input(rng, (4, 13), act=S8)
    acc = reference.linear_accumulate(x, node.weight, node.bias)
    np.testing.assert_array_equal(acc, ref_linear_accumulate(x, node.weight, node.bias))
    torch_acc = F.linear(as_double(x), as_double(node.weight), as_double(node.bias))
    np.testing.assert_array_equal(acc, torch_acc.numpy().astype(np.int64))
    expected = ref_requantize(acc, node.requant)
    np.testing.assert_array_equal(reference.linear(node, x), expected)
    np.testing.assert_array_equal(reference.run(single_node_graph(node, (13,), S8), x), expected)


@pytest.mark.parametrize("call, message", [
    (lambda: reference.conv2d_accumulate(np.zeros((1, 3, 4, 4), int), np.zeros((2, 2, 3, 3),
                                                                                int)), "groups"),
    (lambda: reference.conv2d_accumulate(np.zeros((1, 3, 2, 2), int), np.zeros((2, 3, 3, 3),
                                                                                int)), "fit"),
    (lambda: reference.conv2d_accumulate(np.zeros((3, 4, 4), int), np.zeros((2, 3, 3, 3), int)),
     r"\(N, C, H, W\)"),
    (lambda: reference.conv2d_accumulate(np.zeros((1, 3, 4, 4)), np.zeros((2, 3, 3, 3), int)),
     "integer array"),
    (lambda: reference.linear_accumulate(np.zeros((2, 5), int), np.zeros((3, 4), int)),
     "does not match"),
    (lambda: reference.linear_accumulate(np.zeros((2, 4), int), np.zeros((3, 4), int),
                                         np.zeros(4, int)), "bias"),
])
def test_accumulate_rejects_mismatched_operands(call, message):
    with pytest.raises(ZeroskipError, match=message):
        call()


# --- the exact floating-point fast path ----------------------------------------------------------

@pytest.mark.parametrize("bound, dtype", [
    (2**24, np.float32), (2**24 + 1, np.float64), (2**53, np.float64), (2**53 + 1, np.int64),
    (2**63 - 1, np.int64),
])
def test_exact_dtype_thresholds(bound, dtype):
    assert reference._exact_dtype(bound, 1) is dtype


def test_exact_dtype_refuses_int64_overflow():
    with pytest.raises(ZeroskipError, match="overflows int64"):
        reference._exact_dtype(2**40, 2**23)
    with pytest.raises(ZeroskipError, match="overflows int64"):
        reference._exact_dtype(2**62, 1, max_abs_bias=2**62)


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_fast_paths_equal_the_int64_path(case, monkeypatch):
    shape, out_channels, kernel, stride, padding, groups = case
    rng = np.random.default_rng(6)
    weight = sparse_weight(rng, (out_channels, shape[0] // groups) + kernel)
    bias = rng.integers(-2**31, 2**31, out_channels)
    # Small inputs take float32, full 8-bit ones float64 once fan-in * 127 * 255 passes 2**24.
    x_small = sparse_input(rng, (2,) + shape, act=ir.Activation(2, True, 1.0))
    x_large = rng.integers(2**20, 2**21, (2,) + shape)
    chosen = {}
    fast = {}
    for label, x in (("small", x_small), ("large", x_large)):
        rows = np.abs(weight.astype(np.int64)).reshape(out_channels, -1).sum(axis=1)
        chosen[label] = reference._exact_dtype(np.abs(x).max(), rows.max())
        fast[label] = reference.conv2d_accumulate(x, weight, bias, stride=stride,
                                                  padding=padding, groups=groups)
    assert chosen == {"small": np.float32, "large": np.float64}
    monkeypatch.setattr(reference, "_exact_dtype", lambda *bounds: np.int64)
    for label, x in (("small", x_small), ("large", x_large)):
        slow = reference.conv2d_accumulate(x, weight, bias, stride=stride, padding=padding,
                                           groups=groups)
        np.testing.assert_array_equal(fast[label], slow)
    np.testing.assert_array_equal(
        fast["large"], ref_conv2d_accumulate(x_large, weight, bias, stride, padding, groups))


def test_float32_path_is_exact_up_to_its_limit():
    # 256 products of 255 * 257: the sum 16,776,960 sits just below 2**24 = 16,777,216.
    x = np.full((3, 256), 255)
    x[1, ::2] = 254
    weight = np.full((2, 256), 257)
    weight[1, 1::3] = 256
    assert reference._exact_dtype(255, 256 * 257) is np.float32
    np.testing.assert_array_equal(reference.linear_accumulate(x, weight),
                                  ref_linear_accumulate(x, weight, np.zeros(2, int)))


def test_huge_values_take_the_int64_fallback_and_stay_exact():
    # Partial sums near 2**60: float64 would round them, so only int64 is exact.
    rng = np.random.default_rng(7)
    x = rng.integers(2**45, 2**46, (2, 2, 5, 5)) * rng.choice([-1, 1], (2, 2, 5, 5))
    weight = rng.integers(-2**10, 2**10, (3, 2, 3, 3))
    bias = np.array([1, -1, 3])
    rows = np.abs(weight).reshape(3, -1).sum(axis=1)
    assert reference._exact_dtype(np.abs(x).max(), rows.max()) is np.int64
    acc = reference.conv2d_accumulate(x, weight, bias, padding=(1, 1))
    np.testing.assert_array_equal(acc, ref_conv2d_accumulate(x, weight, bias, (1, 1), (1, 1), 1))
    as_float = F.conv2d(as_double(x), as_double(weight), padding=1).numpy()
    assert not np.array_equal(as_float.astype(np.int64) + bias[:, None, None], acc), \
        "the case must be one that float64 gets wrong"
    linear_x, linear_w = x.reshape(2, 50), rng.integers(-2**10, 2**10, (3, 50))
    np.testing.assert_array_equal(
        reference.linear_accumulate(linear_x, linear_w, bias),
        ref_linear_accumulate(linear_x, linear_w, bias))


# --- pools, add, flatten -------------------------------------------------------------------------

@pytest.mark.parametrize("kernel, stride, padding", [
    ((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (1, 1)),
])
def test_maxpool2d_pads_with_qmin(kernel, stride, padding):
    rng = np.random.default_rng(8)
    x = rng.integers(-128, -60, (2, 3, 7, 6))  # all negative: zero padding would win
    node = ir.MaxPool2d(name="pool", inputs=("x",), kernel=kernel, stride=stride,
                        padding=padding)
    expected = ref_pool(x, kernel, stride, padding, S8.qmin, max)
    np.testing.assert_array_equal(reference.maxpool2d(node, x, S8), expected)
    np.testing.assert_array_equal(reference.run(single_node_graph(node, (3, 7, 6), S8), x),
                                  expected)
    torch_out = F.max_pool2d(as_double(x), kernel, stride, padding)
    np.testing.assert_array_equal(expected, torch_out.numpy().astype(np.int64))


@pytest.mark.parametrize("kernel, stride", [((2, 2), (2, 2)), ((3, 2), (1, 2)), ((6, 5), (1, 1))],
                         ids=["2x2", "3x2-overlapping", "global"])
def test_avgpool2d_requantizes_the_window_sum(kernel, stride):
    rng = np.random.default_rng(9)
    x = sparse_input(rng, (2, 4, 6, 5))
    node = ir.AvgPool2d(name="avg", inputs=("x",), kernel=kernel, stride=stride,
                        requant=make_requant(rng, 4, U8, shift_low=8), act=U8)
    sums = ref_pool(x, kernel, stride, (0, 0), 0, sum)
    torch_sums = F.avg_pool2d(as_double(x), kernel, stride) * math.prod(kernel)
    np.testing.assert_array_equal(sums, torch_sums.numpy().round().astype(np.int64))
    expected = ref_requantize(sums, node.requant)
    np.testing.assert_array_equal(reference.avgpool2d(node, x), expected)
    graph = single_node_graph(node, (4, 6, 5))
    np.testing.assert_array_equal(reference.run(graph, x), expected)
    assert node.is_global(graph.shapes["x"]) == (kernel == (6, 5))


@pytest.mark.parametrize("input_shape", [(3, 4, 4), (6,)])
def test_add_scales_both_inputs_then_requantizes(input_shape):
    rng = np.random.default_rng(10)
    a = rng.integers(-128, 128, (2,) + input_shape)
    b = rng.integers(-128, 128, (2,) + input_shape)
    node = ir.Add(name="add", inputs=("a", "b"), input_multipliers=(3000, 65535),
                  requant=make_requant(rng, input_shape[0], S8, shift_low=10), act=S8)
    expected = ref_requantize(a * 3000 + b * 65535, node.requant)
    np.testing.assert_array_equal(reference.add(node, a, b), expected)
    with pytest.raises(ZeroskipError, match="differ in shape"):
        reference.add(node, a, b[:1])


def test_flatten_order_is_torch_flatten():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    graph = ir.Graph(nodes=(ir.Input(name="x", inputs=(), shape=(3, 4, 5),
                                     act=ir.Activation(8, False, 1.0)),
                            ir.Flatten(name="flat", inputs=("x",))), output="flat")
    x = x % 256
    expected = torch.flatten(torch.from_numpy(x), 1).numpy()
    np.testing.assert_array_equal(reference.flatten(x), expected)
    np.testing.assert_array_equal(reference.run(graph, x), expected)


# --- whole graphs --------------------------------------------------------------------------------

def residual_graph(rng):
    """conv -> maxpool -> [conv(groups) + skip] -> global avgpool -> flatten -> linear, plus a
    dead branch that is not an ancestor of the output."""
    return ir.Graph(nodes=(
        ir.Input(name="x", inputs=(), shape=(3, 8, 8), act=U8),
        make_conv(rng, "conv1", "x", 3, 4, padding=(1, 1)),
        ir.MaxPool2d(name="pool", inputs=("conv1",), kernel=(3, 3), stride=(2, 2),
                     padding=(1, 1)),
        make_conv(rng, "conv2", "pool", 4, 4, padding=(1, 1), groups=2),
        ir.Add(name="add", inputs=("pool", "conv2"), input_multipliers=(7, 9),
               requant=make_requant(rng, 4, U8, shared=True, shift_low=3), act=U8),
        ir.AvgPool2d(name="gap", inputs=("add",), kernel=(4, 4), stride=(1, 1),
                     requant=make_requant(rng, 4, U8, shift_low=4), act=U8),
        ir.Flatten(name="flat", inputs=("gap",)),
        make_linear(rng, "fc", "flat", 4, 5, act=S8),
        make_conv(rng, "unused", "conv1", 4, 2),
    ), output="fc")


def ref_residual_graph(graph, x):
    conv1, conv2, add, gap, fc = (graph[name] for name in ("conv1", "conv2", "add", "gap", "fc"))
    h1 = ref_requantize(ref_conv2d_accumulate(x, conv1.weight, conv1.bias, (1, 1), (1, 1), 1),
                        conv1.requant)
    pooled = ref_pool(h1, (3, 3), (2, 2), (1, 1), U8.qmin, max)
    h2 = ref_requantize(ref_conv2d_accumulate(pooled, conv2.weight, conv2.bias, (1, 1), (1, 1),
                                              2), conv2.requant)
    summed = ref_requantize(pooled * 7 + h2 * 9, add.requant)
    averaged = ref_requantize(ref_pool(summed, (4, 4), (1, 1), (0, 0), 0, sum), gap.requant)
    flat = averaged.reshape(x.shape[0], -1)
    return ref_requantize(ref_linear_accumulate(flat, fc.weight, fc.bias), fc.requant)


def test_run_matches_the_ref_composition_and_run_layers():
    rng = np.random.default_rng(11)
    graph = residual_graph(rng)
    x = sparse_input(rng, (3, 3, 8, 8))
    y = reference.run(graph, x)
    np.testing.assert_array_equal(y, ref_residual_graph(graph, x))
    layers = reference.run_layers(graph, x)
    assert list(layers) == [node.name for node in graph.nodes]
    np.testing.assert_array_equal(layers["fc"], y)
    for name, value in layers.items():
        assert value.dtype == np.int64 and value.shape == (3,) + graph.shapes[name]
        act = graph.acts[name]
        assert act.qmin <= value.min() and value.max() <= act.qmax


def test_run_accepts_any_integer_dtype():
    rng = np.random.default_rng(12)
    graph = residual_graph(rng)
    x = sparse_input(rng, (2, 3, 8, 8))
    np.testing.assert_array_equal(reference.run(graph, x.astype(np.uint8)),
                                  reference.run(graph, x))


def zeros_with(index, value):
    """A valid (2, 3, 8, 8) batch of zeros but for one ``value`` at ``index``."""
    x = np.zeros((2, 3, 8, 8), np.int64)
    x[index] = value
    return x


@pytest.mark.parametrize("x, message", [
    (np.zeros((2, 3, 8, 8), np.float32), "integer array, got dtype float32"),
    (np.zeros((2, 3, 8, 8), bool), "integer array, got dtype bool"),
    (np.zeros((3, 8, 8), np.int64), r"shape \(N, 3, 8, 8\), got \(3, 8, 8\)"),
    (np.zeros((2, 8, 8, 3), np.int64), r"shape \(N, 3, 8, 8\), got \(2, 8, 8, 3\)"),
    (np.zeros((0, 3, 8, 8), np.int64), "empty"),
    (zeros_with((1, 2, 0, 5), 256), r"value 256 at index \(1, 2, 0, 5\) is above qmax 255"),
    (zeros_with((0, 1, 7, 7), -1), r"value -1 at index \(0, 1, 7, 7\) is below qmin 0"),
])
def test_run_rejects_bad_input_batches(x, message):
    graph = residual_graph(np.random.default_rng(13))
    with pytest.raises(ZeroskipError, match=message) as error:
        reference.run(graph, x)
    assert "'x'" in str(error.value)


# --- work ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_work_matches_pair_by_pair_counting(case):
    shape, out_channels, kernel, stride, padding, groups = case
    rng = np.random.default_rng(14)
    node = make_conv(rng, "conv", "x", shape[0], out_channels, kernel, stride, padding, groups)
    x = sparse_input(rng, (3,) + shape, zero_fraction=0.5)
    work = reference.work(single_node_graph(node, shape), x)["conv"]
    dense, effective = ref_conv2d_pairs(x, node.weight, stride, padding, groups)
    assert work.dense_macs * 3 == dense
    assert work.effective_macs_total == effective
    assert work.effective_macs == effective / 3 and work.batch_size == 3
    assert work.weights == node.weight.size
    assert work.nonzero_weights == np.count_nonzero(node.weight)


def test_graph_work_matches_pair_by_pair_counting():
    rng = np.random.default_rng(15)
    graph = residual_graph(rng)
    x = sparse_input(rng, (2, 3, 8, 8), zero_fraction=0.6)
    work = reference.work(graph, x)
    layers = reference.run_layers(graph, x)
    assert list(work) == ["conv1", "conv2", "add", "gap", "fc", "unused"]
    for name in ("conv1", "conv2", "unused"):
        node = graph[name]
        dense, effective = ref_conv2d_pairs(layers[node.input], node.weight, node.stride,
                                            node.padding, node.groups)
        assert (work[name].dense_macs * 2, work[name].effective_macs_total) == (dense, effective)
    flat, fc = layers["flat"], graph["fc"]
    pairs = sum(1 for b, o, k in np.ndindex(2, *fc.weight.shape)
                if fc.weight[o, k] != 0 and flat[b, k] != 0)
    assert work["fc"].effective_macs_total == pairs and work["fc"].dense_macs == fc.weight.size
    for name in ("add", "gap"):
        assert (work[name].weights, work[name].dense_macs, work[name].effective_macs_total) == \
            (0, 0, 0)


def test_work_without_inputs_has_no_effective_macs():
    work = reference.work(residual_graph(np.random.default_rng(16)))
    assert work["conv1"].dense_macs == 4 * 8 * 8 * 3 * 3 * 3
    assert work["conv2"].dense_macs == 4 * 4 * 4 * 2 * 3 * 3
    assert all(w.effective_macs is None and w.effective_macs_total is None and
               w.batch_size is None for w in work.values())


def test_work_is_frozen():
    work = reference.work(residual_graph(np.random.default_rng(17)))["fc"]
    with pytest.raises(AttributeError):
        work.weights = 0
