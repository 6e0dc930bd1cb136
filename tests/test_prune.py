"""Tests for zeroskip.frontend.prune: element-wise masks and physically shrinking structured pruning."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import symbolic_trace
from torch.nn.utils import prune as torch_prune

from zeroskip.errors import EmptyLayerWarning, FrontendError
from zeroskip.frontend.prune import UNPRUNED_CHANNELS_ATTR, prune, remove_reparametrization, sparsity


class SmallCNN(nn.Module):
    """conv-bn-relu-conv-bn-relu-pool-flatten-linear on 1x8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        return self.fc(self.flatten(x))


class DepthwiseNet(nn.Module):
    """Pointwise - depthwise - pointwise block, then global pooling and torch.flatten."""

    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2d(3, 8, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu6 = nn.ReLU6()
        self.pw2 = nn.Conv2d(8, 12, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.pw1(x)))
        x = torch.relu(self.relu6(self.bn2(self.dw(x))))
        x = self.pool(self.pw2(x).relu())
        return self.fc(torch.flatten(x, 1))


class ResidualNet(nn.Module):
    """A stem and one residual block; .view(n, -1) before the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.stem(x))
        y = self.bn_b(self.conv_b(self.relu(self.bn_a(self.conv_a(x)))))
        x = self.pool(self.relu(x + y))
        return self.fc(x.view(x.size(0), -1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _prunable(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _exact_eval(model):
    """Float64, eval mode, BatchNorms that are far from identity: comparisons are then meaningful."""
    model.double().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-1, 1)
    return model


@torch.no_grad()
def _silence_filter(conv, batchnorm, index):
    """Make output channel ``index`` exactly zero after the BatchNorm in eval mode."""
    conv.weight[index] = 0
    conv.bias[index] = 0
    batchnorm.running_mean[index] = 0
    batchnorm.bias[index] = 0


def _others(count, removed):
    return [index for index in range(count) if index not in removed]


# ---------------------------------------------------------------------------------------------
# Element-wise


def test_element_global_magnitude_reaches_amount_and_removes_smallest():
    model = SmallCNN()
    prune(model, 0.6)
    layers = _prunable(model)
    total = sum(m.weight.numel() for m in layers.values())
    assert sparsity(model) == pytest.approx(round(0.6 * total) / total)
    assert torch_prune.is_pruned(model)
    pruned, kept = [], []
    for module in layers.values():
        assert isinstance(module.weight_orig, nn.Parameter)
        assert "weight_mask" in dict(module.named_buffers())
        magnitude = module.weight_orig.detach().abs()
        pruned.append(magnitude[module.weight_mask == 0])
        kept.append(magnitude[module.weight_mask == 1])
    # One threshold over all layers: every removed weight is at most as large as every kept one.
    assert torch.cat(pruned).max() <= torch.cat(kept).min()


def test_global_pruning_that_empties_layers_names_them_in_one_warning():
    model = SmallCNN()
    with torch.no_grad():
        model.conv1.weight.mul_(1e-3)  # all below every other layer's weights
        model.conv2.weight.mul_(1e-3)
    with pytest.warns(EmptyLayerWarning) as caught:
        prune(model, 0.7)
    assert [str(w.message) for w in caught] == [
        "prune: 2 layers 'conv1' (72 weights), 'conv2' (1,152 weights) keep no nonzero weight: "
        "the output is the bias alone"]
    assert caught[0].filename == __file__  # points at the caller of prune
    assert not model.conv1.weight.any() and model.fc.weight.any()


def test_pruning_that_leaves_a_weight_in_every_layer_does_not_warn():
    model = SmallCNN()
    with torch.no_grad():
        model.conv1.weight.mul_(1e-3)
    prune(model, 0.9, scope="layer")  # warnings are errors under pytest
    assert all(module.weight.any() for module in _prunable(model).values())


def test_element_layer_scope_prunes_each_layer_to_amount():
    model = SmallCNN()
    prune(model, 0.3, scope="layer")
    for module in _prunable(model).values():
        mask = module.weight_mask
        assert int((mask == 0).sum()) == round(0.3 * mask.numel())
        magnitude = module.weight_orig.detach().abs()
        assert magnitude[mask == 0].max() <= magnitude[mask == 1].min()


def test_element_repeated_pruning_keeps_old_zeros():
    model = SmallCNN()
    prune(model, 0.3)
    first_masks = {name: m.weight_mask.clone() for name, m in _prunable(model).items()}
    with torch.no_grad():  # pruned weights made huge: magnitude alone would now keep them
        for name, module in _prunable(model).items():
            module.weight_orig[first_masks[name] == 0] = 100.0
    prune(model, 0.5)
    total = sum(mask.numel() for mask in first_masks.values())
    assert sparsity(model) == pytest.approx(round(0.5 * total) / total)
    for name, module in _prunable(model).items():
        assert torch.all(module.weight_mask[first_masks[name] == 0] == 0)
    # A lower amount never brings weights back.
    prune(model, 0.1)
    assert sparsity(model) == pytest.approx(round(0.5 * total) / total)


def test_element_combines_with_a_mask_from_torch_prune():
    model = SmallCNN()
    torch_prune.random_unstructured(model.conv2, "weight", amount=0.4)
    foreign = model.conv2.weight_mask.clone()
    prune(model, 0.6, layers=["conv2"])
    assert torch.all(model.conv2.weight_mask[foreign == 0] == 0)
    zeros = int((model.conv2.weight == 0).sum())
    assert zeros == round(0.6 * model.conv2.weight.numel())
    assert not hasattr(model.conv1, "weight_mask")


def test_remove_reparametrization_makes_masks_permanent():
    model = SmallCNN()
    x = torch.randn(2, 1, 8, 8)
    prune(model, 0.5)
    before, expected = sparsity(model), model.eval()(x)
    assert remove_reparametrization(model) is model
    assert not torch_prune.is_pruned(model)
    assert all(not hasattr(m, "weight_orig") for m in _prunable(model).values())
    assert isinstance(model.conv1.weight, nn.Parameter)
    assert sparsity(model) == before
    torch.testing.assert_close(model(x), expected)
    symbolic_trace(model)


# ---------------------------------------------------------------------------------------------
# Taylor


def _regression_batches(zero_column):
    batches = []
    for _ in range(3):
        inputs = torch.randn(16, 4)
        inputs[:, zero_column] = 0
        batches.append((inputs, torch.randn(16, 1)))
    return batches


def test_taylor_prunes_a_large_weight_with_zero_gradient_where_magnitude_does_not():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[5.0, 0.5, 2.0, 3.0]]))
    # Input 0 is always zero, so dL/dw0 = 0 and w0 is worthless despite being the largest.
    data = _regression_batches(zero_column=0)
    by_taylor = prune(copy.deepcopy(model), 0.25, criterion="taylor", data=data, loss_fn=F.mse_loss)
    by_magnitude = prune(copy.deepcopy(model), 0.25)
    assert by_taylor[0].weight_mask.tolist() == [[0.0, 1.0, 1.0, 1.0]]
    assert by_magnitude[0].weight_mask.tolist() == [[1.0, 0.0, 1.0, 1.0]]


def test_taylor_filter_pruning_removes_a_large_filter_nobody_reads():
    model = SmallCNN()
    with torch.no_grad():
        model.conv1.weight[3] *= 10  # the largest filter by L1 norm ...
        model.conv2.weight[:, 3] = 0  # ... but its channel is never used downstream
    x = torch.randn(4, 1, 8, 8)
    data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    original = model.conv1.weight.detach().clone()

    by_taylor = prune(
        copy.deepcopy(model), 1 / 8, "filter", "taylor", "layer",
        example_input=x, data=data, loss_fn=F.cross_entropy, layers=["conv1"],
    )
    by_magnitude = prune(
        copy.deepcopy(model), 1 / 8, "filter", scope="layer", example_input=x, layers=["conv1"]
    )
    assert torch.equal(by_taylor.conv1.weight, original[_others(8, {3})])
    assert by_magnitude.conv1.out_channels == 7
    assert any(torch.equal(row, original[3]) for row in by_magnitude.conv1.weight)


def test_taylor_leaves_model_state_untouched():
    model = SmallCNN().train()
    model.conv1.weight.requires_grad_(False)
    running_mean = model.bn1.running_mean.clone()
    data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    prune(model, 0.5, criterion="taylor", data=data, loss_fn=F.cross_entropy)
    assert model.training
    assert torch.equal(model.bn1.running_mean, running_mean)
    assert not model.conv1.weight_orig.requires_grad
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize(
    ("data", "loss_fn", "missing"),
    [(None, F.mse_loss, "missing: data"), ([], None, "missing: loss_fn"), (None, None, "data and loss_fn")],
)
def test_taylor_without_data_or_loss_fn_says_what_to_pass(data, loss_fn, missing):
    with pytest.raises(FrontendError, match="criterion='taylor'") as error:
        prune(SmallCNN(), 0.5, criterion="taylor", data=data, loss_fn=loss_fn)
    assert "data=" in str(error.value) and "loss_fn=" in str(error.value)
    assert missing in str(error.value)


def test_taylor_with_no_batches_is_an_error():
    with pytest.raises(FrontendError, match="no batches"):
        prune(SmallCNN(), 0.5, criterion="taylor", data=[], loss_fn=F.cross_entropy)


def test_taylor_with_malformed_batches_is_an_error():
    with pytest.raises(FrontendError, match=r"\(inputs, targets\) pairs"):
        prune(SmallCNN(), 0.5, criterion="taylor", data=[torch.randn(2, 1, 8, 8)], loss_fn=F.cross_entropy)


# ---------------------------------------------------------------------------------------------
# Structured: filter and channel


def test_filter_pruning_shrinks_small_cnn_and_keeps_its_output():
    model = _exact_eval(SmallCNN())
    dead_conv1, dead_conv2 = {1, 5}, {0, 7, 9, 15}
    for index in dead_conv1:
        _silence_filter(model.conv1, model.bn1, index)
    for index in dead_conv2:
        _silence_filter(model.conv2, model.bn2, index)
    original = copy.deepcopy(model)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    expected = model(x)

    assert prune(model, 0.25, "filter", scope="layer", example_input=x) is model

    keep1, keep2 = _others(8, dead_conv1), _others(16, dead_conv2)
    assert (model.conv1.out_channels, model.bn1.num_features, model.conv2.in_channels) == (6, 6, 6)
    assert (model.conv2.out_channels, model.bn2.num_features) == (12, 12)
    assert (model.fc.in_features, model.fc.out_features) == (12 * 16, 10)
    assert torch.equal(model.conv1.weight, original.conv1.weight[keep1])
    assert torch.equal(model.bn1.running_var, original.bn1.running_var[keep1])
    assert torch.equal(model.conv2.weight, original.conv2.weight[keep2][:, keep1])
    # Through the flatten, channel c of conv2 is the block of 4*4 features starting at 16*c.
    columns = [16 * c + offset for c in keep2 for offset in range(16)]
    assert torch.equal(model.fc.weight, original.fc.weight[:, columns])
    assert getattr(model.conv1, UNPRUNED_CHANNELS_ATTR) == 8
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(symbolic_trace(model)(x), expected)


def test_channel_pruning_shrinks_small_cnn_and_keeps_its_output():
    model = _exact_eval(SmallCNN())
    unread_by_conv2, unread_by_fc = [2, 6], [3, 10, 11, 12]
    with torch.no_grad():
        model.conv2.weight[:, unread_by_conv2] = 0
        for channel in unread_by_fc:
            model.fc.weight[:, 16 * channel : 16 * (channel + 1)] = 0
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    expected = model(x)

    # Default layers: conv1 reads the model input and is skipped; conv2 and fc lose input channels.
    prune(model, 0.25, "channel", scope="layer", example_input=x)

    assert (model.conv1.out_channels, model.bn1.num_features, model.conv2.in_channels) == (6, 6, 6)
    assert (model.conv2.out_channels, model.bn2.num_features, model.fc.in_features) == (12, 12, 12 * 16)
    torch.testing.assert_close(model(x), expected)


def test_filter_pruning_through_a_depthwise_conv_shrinks_it_too():
    model = _exact_eval(DepthwiseNet())
    dead = {2, 4}
    for index in dead:
        _silence_filter(model.pw1, model.bn1, index)
        _silence_filter(model.dw, model.bn2, index)
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = model(x)

    prune(model, 0.25, "filter", example_input=x, layers=["pw1"])

    dw = model.dw
    assert (dw.in_channels, dw.out_channels, dw.groups, tuple(dw.weight.shape)) == (6, 6, 6, (6, 1, 3, 3))
    assert (model.pw1.out_channels, model.bn1.num_features, model.bn2.num_features) == (6, 6, 6)
    assert model.pw2.in_channels == 6 and model.pw2.out_channels == 12
    assert torch.equal(dw.weight, original.dw.weight[_others(8, dead)])
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(symbolic_trace(model)(x), expected)


def test_filter_pruning_through_zero_padding_and_a_depthwise_conv():
    """Keras-style 'same' padding at stride 2 (zeroskip.models.DepthwiseSeparable)."""
    from zeroskip.models import DepthwiseSeparable

    model = _exact_eval(nn.Sequential(nn.Conv2d(3, 8, 1), DepthwiseSeparable(8, 12, 2, (6, 6))))
    assert isinstance(model[1].dw.pad, nn.ZeroPad2d)
    dead = {1, 6}
    for index in dead:
        with torch.no_grad():
            model[0].weight[index] = 0
            model[0].bias[index] = 0
        _silence_filter(model[1].dw.conv, model[1].dw.bn, index)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = model(x)

    prune(model, 0.25, "filter", example_input=x, layers=["0"])

    assert model[1].dw.conv.groups == model[1].pw.conv.in_channels == 6
    torch.testing.assert_close(model(x), expected)


def test_channel_pruning_behind_a_depthwise_conv_and_global_pooling():
    model = _exact_eval(DepthwiseNet())
    with torch.no_grad():
        model.pw2.weight[:, [0, 5]] = 0
        model.fc.weight[:, [1, 7, 8]] = 0
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = model(x)

    prune(model, 0.25, "channel", scope="layer", example_input=x, layers=["pw2", "fc"])

    assert (model.pw1.out_channels, model.dw.groups, model.pw2.in_channels) == (6, 6, 6)
    assert (model.pw2.out_channels, model.fc.in_features) == (9, 9)
    torch.testing.assert_close(model(x), expected)


def test_layer_feeding_a_residual_add_is_skipped():
    model = ResidualNet()
    x = torch.randn(2, 3, 8, 8)
    prune(model, 0.5, "filter", scope="layer", example_input=x)
    assert (model.conv_a.out_channels, model.bn_a.num_features, model.conv_b.in_channels) == (4, 4, 4)
    assert model.stem.out_channels == model.conv_b.out_channels == model.bn_b.num_features == 8
    assert model.fc.out_features == 4
    assert model(x).shape == (2, 4)
    symbolic_trace(model)


@pytest.mark.parametrize(
    ("layer", "reason"),
    [("conv_b", "residual add 'add'"), ("stem", "residual add 'add'"), ("fc", "model output")],
)
def test_naming_a_layer_that_cannot_lose_filters_is_an_error(layer, reason):
    with pytest.raises(FrontendError, match=f"layer '{layer}' cannot be pruned") as error:
        prune(ResidualNet(), 0.5, "filter", example_input=torch.randn(1, 3, 8, 8), layers=[layer])
    assert reason in str(error.value)


@pytest.mark.parametrize(
    ("model", "granularity", "layer", "reason"),
    [
        (DepthwiseNet(), "filter", "dw", "depthwise"),
        (DepthwiseNet(), "channel", "dw", "depthwise"),
        (DepthwiseNet(), "channel", "pw1", "model input"),
        (ResidualNet(), "channel", "conv_a", "the layer feeding it, 'stem', cannot lose filters"),
        (ResidualNet(), "channel", "fc", "residual add 'add'"),
    ],
)
def test_naming_a_layer_that_cannot_lose_channels_is_an_error(model, granularity, layer, reason):
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(FrontendError, match=f"layer '{layer}' cannot be pruned") as error:
        prune(model, 0.5, granularity, example_input=x, layers=[layer])
    assert reason in str(error.value)


def test_channel_pruning_of_a_consumer_reaches_back_over_a_residual_block():
    model = ResidualNet()
    x = torch.randn(2, 3, 8, 8)
    prune(model, 0.5, "channel", scope="layer", example_input=x, layers=["conv_b"])
    assert (model.conv_a.out_channels, model.conv_b.in_channels) == (4, 4)
    assert model(x).shape == (2, 4)


def test_global_filter_pruning_removes_the_weakest_filters_across_layers():
    model = SmallCNN()
    with torch.no_grad():
        for index in (0, 4, 6):
            model.conv1.weight[index] = 0
        for index in (2, 3, 11):
            model.conv2.weight[index] = 0
    original = copy.deepcopy(model)
    x = torch.randn(2, 1, 8, 8)
    # 8 + 16 removable filters (fc is the output and is skipped): a quarter is 6, the six zero ones.
    prune(model, 0.25, "filter", scope="global", example_input=x)
    keep1, keep2 = _others(8, {0, 4, 6}), _others(16, {2, 3, 11})
    assert torch.equal(model.conv1.weight, original.conv1.weight[keep1])
    assert torch.equal(model.conv2.weight, original.conv2.weight[keep2][:, keep1])


def test_structured_amount_is_final_and_keeps_one_filter():
    model = SmallCNN()
    x = torch.randn(2, 1, 8, 8)
    for amount, expected in [(0.25, 6), (0.25, 6), (0.5, 4), (0.3, 4), (0.99, 1)]:
        prune(model, amount, "filter", scope="layer", example_input=x, layers=["conv1"])
        assert model.conv1.out_channels == expected
    assert model.conv2.in_channels == 1
    assert model(x).shape == (2, 10)


def test_structured_pruning_keeps_element_masks_consistent():
    model = SmallCNN()
    x = torch.randn(2, 1, 8, 8)
    prune(model, 0.5)
    prune(model, 0.5, "filter", scope="layer", example_input=x, layers=["conv1", "conv2"])
    for module in _prunable(model).values():
        assert module.weight_mask.shape == module.weight_orig.shape == module.weight.shape
    assert model.conv2.weight_orig.shape == (8, 4, 3, 3)
    assert model.fc.weight_mask.shape == (10, 8 * 16)
    assert model(x).shape == (2, 10)
    assert 0.5 <= sparsity(model) < 1


def test_global_structured_scores_are_per_weight():
    model = SmallCNN()
    with torch.no_grad():
        # conv1 filters hold 9 weights of about 0.1, conv2 filters 72 weights of about 0.05: by
        # L1 norm conv1's filters are the weakest, per weight conv2's are.
        model.conv1.weight.copy_(0.1 + 0.001 * torch.rand_like(model.conv1.weight))
        model.conv2.weight.copy_(0.05 + 0.001 * torch.rand_like(model.conv2.weight))
    prune(model, 0.25, "filter", example_input=torch.randn(2, 1, 8, 8))
    assert (model.conv1.out_channels, model.conv2.out_channels) == (8, 10)


FLATTENS = {
    "nn.Flatten": nn.Flatten(),
    "torch.flatten": lambda x: torch.flatten(x, 1),
    ".flatten(1)": lambda x: x.flatten(1),
    ".view(size(0), -1)": lambda x: x.view(x.size(0), -1),
    ".reshape(shape[0], -1)": lambda x: x.reshape(x.shape[0], -1),
}


class ConvHead(nn.Module):
    """conv-relu-dropout, one of several ways to flatten, then a Linear over 6 blocks of 5*5."""

    def __init__(self, flatten):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.flatten = flatten
        self.fc = nn.Linear(6 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.dropout(self.relu(self.conv(x)))))


@pytest.mark.parametrize("flatten", FLATTENS.values(), ids=FLATTENS.keys())
def test_filter_pruning_maps_channels_to_feature_blocks_through_any_flatten(flatten):
    model = ConvHead(flatten).double().eval()
    with torch.no_grad():
        model.conv.weight[[1, 4]] = 0
        model.conv.bias[[1, 4]] = 0
    original_fc = model.fc.weight.detach().clone()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    expected = model(x)
    prune(model, 1 / 3, "filter", example_input=x, layers=["conv"])
    assert model.conv.out_channels == 4 and model.fc.in_features == 4 * 25
    columns = [25 * c + offset for c in (0, 2, 3, 5) for offset in range(25)]
    assert torch.equal(model.fc.weight, original_fc[:, columns])
    torch.testing.assert_close(model(x), expected)


# ---------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": -0.1}, r"amount must be a number in \[0, 1\).*-0.1"),
        ({"amount": 1.0}, r"amount must be a number in \[0, 1\).*1.0"),
        ({"amount": math.nan}, r"amount must be a number in \[0, 1\)"),
        ({"amount": "0.5"}, r"amount must be a number.*'0.5'"),
        ({"amount": True}, r"amount must be a number"),
        ({"granularity": "row"}, r"unknown granularity 'row'; supported: 'element', 'filter', 'channel'"),
        ({"criterion": "l2"}, r"unknown criterion 'l2'; supported: 'magnitude', 'taylor'"),
        ({"scope": "net"}, r"unknown scope 'net'; supported: 'global', 'layer'"),
        ({"layers": ["conv9"]}, r"no module named 'conv9'.*'conv1', 'conv2', 'fc'"),
        ({"layers": ["bn1"]}, r"'bn1' is a BatchNorm2d; only nn.Conv2d and nn.Linear"),
        ({"layers": "conv1"}, r"not a single string; did you mean layers=\['conv1'\]"),
        ({"layers": []}, r"layers is empty"),
        ({"layers": 3}, r"layers must be an iterable"),
        ({"granularity": "filter"}, r"needs example_input="),
        ({"granularity": "channel", "example_input": torch.randn(2, 3, 8, 8)}, r"example_input does not run"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"amount": 0.5, **kwargs}
    with pytest.raises(FrontendError, match=message):
        prune(SmallCNN(), **arguments)


def test_model_must_be_a_module():
    with pytest.raises(FrontendError, match="model must be a torch.nn.Module, got dict"):
        prune({}, 0.5)


def test_model_without_prunable_layers_is_an_error():
    with pytest.raises(FrontendError, match="no prunable layers.*nn.Conv2d and nn.Linear"):
        prune(nn.Sequential(nn.ReLU(), nn.Flatten()), 0.5)
    with pytest.raises(FrontendError, match="no Conv2d or Linear"):
        sparsity(nn.Sequential(nn.ReLU()))


def test_structured_pruning_with_nothing_removable_is_an_error():
    expected = "no layer of the model can be pruned.*'0': its output channels are a model output"
    with pytest.raises(FrontendError, match=expected):
        prune(nn.Sequential(nn.Linear(4, 2)), 0.5, "filter", example_input=torch.randn(1, 4))


def test_untraceable_model_is_an_error_for_structured_pruning():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.conv(x)
            if x.sum() > 0:
                x = -x
            return self.fc(x.mean((2, 3)))

    model = DataDependent()
    with pytest.raises(FrontendError, match="torch.fx.symbolic_trace, which failed"):
        prune(model, 0.5, "filter", example_input=torch.randn(1, 1, 5, 5))
    prune(model, 0.5)  # element-wise pruning needs no tracing
    assert sparsity(model) == pytest.approx(0.5, abs=0.02)


def test_repeated_pruning_counts_masked_weights_first_when_scores_tie():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, 2.0, 5.0, 3.0]]))
    prune(model, 0.25)  # masks w0
    # Inputs 1 and 2 are always zero: w1, w2 and the masked w0 all score exactly 0 by Taylor, and
    # the masked one must be among the two pruned, or three weights would end up zero.
    data = [(x.index_fill(1, torch.tensor([2]), 0.0), y) for x, y in _regression_batches(zero_column=1)]
    prune(model, 0.5, criterion="taylor", data=data, loss_fn=F.mse_loss)
    mask = model[0].weight_mask.flatten().tolist()
    assert mask[0] == 0 and mask[3] == 1 and sum(mask) == 2
