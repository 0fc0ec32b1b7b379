"""Layer kinds, conv→BatchNorm pairs, channel statistics and the BN-aware removal of whole filters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pai_core import layers, masks
from pai_core.results import ExperimentSpec, spec_options

DT = torch.float64


class Mobile(nn.Module):
    """stem 3x3 -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> pointwise 1x1 -> BN -> grouped 3x3 -> pool -> Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.act = nn.ReLU6()
        self.pw = nn.Conv2d(4, 6, 1)
        self.bn2 = nn.BatchNorm2d(6)
        self.grouped = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = nn.functional.relu6(self.bn0(self.stem(x)))
        h = self.act(self.bn1(self.dw(h)))
        h = self.bn2(self.pw(h)) + 0.0  # the sum is not a conv output: nothing after it pairs
        h = self.grouped(h)
        return self.fc(h.mean((2, 3)))


def test_layer_kinds_and_pointwise_only():
    net = Mobile()
    assert layers.layer_kinds(net) == {
        "stem.weight": "stem",
        "dw.weight": "depthwise",
        "pw.weight": "pointwise",
        "grouped.weight": "conv",
        "fc.weight": "linear",
    }
    names = list(layers.layer_kinds(net))
    assert layers.prunable(net, names, "all") == names
    assert layers.prunable(net, names, "pointwise") == ["pw.weight", "fc.weight"]
    with pytest.raises(ValueError, match="prune_layers"):
        layers.prunable(net, names, "dense")
    with pytest.raises(ValueError, match="bn0.weight"):
        layers.layer_kinds(net, ["bn0.weight"])


def test_prune_layers_choices_match_the_spec():
    """results.py spells the choices out (layers imports torch): keep them equal."""
    assert spec_options()["prune_layers"][0].choices == layers.PRUNE_LAYERS


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "mobilenetv2_100", "resnet50"])
def test_pointwise_only_excludes_depthwise_and_stem_on_real_architectures(arch):
    timm = pytest.importorskip("timm")
    net = timm.create_model(arch, pretrained=False, num_classes=0)
    kinds = layers.layer_kinds(net)
    keep = set(layers.prunable(net, kinds, "pointwise"))
    for name, kind in kinds.items():
        m = net.get_submodule(name.rpartition(".")[0])
        assert (name in keep) == (kind in ("pointwise", "linear")), name
        if name in keep:
            assert isinstance(m, nn.Linear) or (m.kernel_size == (1, 1) and m.groups == 1), name
    assert kinds[next(iter(kinds))] == "stem" and next(iter(kinds)) not in keep
    assert any(k == "depthwise" for k in kinds.values()) == (arch != "resnet50")


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "torchvision_mobilenet_v2"])
def test_conv_bn_pairs_found_through_fused_and_sequential_blocks(arch):
    if arch == "torchvision_mobilenet_v2":
        tv = pytest.importorskip("torchvision")
        net = tv.models.mobilenet_v2(weights=None).features
    else:
        timm = pytest.importorskip("timm")
        net = timm.create_model(arch, pretrained=False, num_classes=0)
    net.eval()
    pairs = layers.conv_bn_pairs(net, torch.randn(1, 3, 32, 32))
    bns = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted(pairs.values()) == sorted(bns)  # every BatchNorm normalises one conv's output
    for conv, bn in pairs.items():
        c = net.get_submodule(conv.rpartition(".")[0])
        assert c.out_channels == net.get_submodule(bn).num_features
    assert not any(m.training for m in net.modules())


def test_pairs_skip_batchnorms_fed_by_anything_but_a_conv():
    net = Mobile().eval()
    assert layers.conv_bn_pairs(net, torch.randn(2, 3, 5, 5)) == {
        "stem.weight": "bn0",
        "dw.weight": "bn1",
        "pw.weight": "bn2",
    }


def _dead_net() -> tuple[nn.Module, torch.Tensor]:
    """Channel 0 of ``dw`` is dead on positive inputs (negative filter, BN shift ≤ 0 after it) but
    its BatchNorm leaves β − γμ/σ = 2 > 0 when the filter is removed; channel 1 is live."""
    torch.manual_seed(0)
    net = Mobile().to(DT).eval()
    with torch.no_grad():
        net.stem.weight.abs_()
        net.bn0.running_mean.zero_()
        net.bn0.bias.fill_(1.0)  # stem output > 0, so dw sees positive inputs
        net.dw.weight[0].fill_(-1.0)
        net.dw.weight[1].fill_(0.5)
        net.bn1.running_mean.copy_(torch.tensor([-2.0, 0.0, 0.0, 0.0]))
        net.bn1.running_var.fill_(1.0)
        net.bn1.weight.fill_(1.0)
        net.bn1.bias.fill_(0.0)
    x = torch.rand(8, 3, 5, 5, dtype=DT) + 0.1
    return net, x


def test_channel_stats_means_and_dead_channels():
    net, x = _dead_net()
    stats = layers.channel_stats(net, [(x[:5], None), (x[5:], None)], ["bn0", "bn1"])
    with torch.no_grad():
        z = net.dw(nn.functional.relu6(net.bn0(net.stem(x))))
        pre = net.bn1(z)
    assert torch.allclose(stats.bn_input_mean["bn1"], z.mean((0, 2, 3)), rtol=1e-12)
    # act is the module after bn1: channel 0 never fires (pre-activation < 0 everywhere)
    assert (pre[:, 0] < 0).all() and stats.dead["act"][0] and not stats.dead["act"][1]
    summary = stats.dead_summary()
    assert summary["dead_channels"] >= 1 and summary["dead_channels_by_layer"]["act"] >= 1


def test_bn_aware_removal_of_a_dead_channel_changes_nothing():
    """Removing a dead channel's whole filter switches it on through its BatchNorm; the BN-aware
    treatment keeps it dead (exactly), and replaces a live channel by its mean output."""
    net, x = _dead_net()
    dense = net(x)
    pairs = layers.conv_bn_pairs(net, x[:1])
    stats = layers.channel_stats(net, [(x, None)], sorted(set(pairs.values())))
    keep = {
        n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if n.endswith("weight")
    }
    keep["dw.weight"][0] = False  # the dead channel's whole filter
    naive = Mobile().to(DT).eval()
    naive.load_state_dict(net.state_dict())
    masks.prune_(naive, keep)
    with torch.no_grad():
        const = net.bn1(torch.zeros(1, 4, 1, 1, dtype=DT))[0, 0, 0, 0]
    assert float(const) == pytest.approx(2.0, rel=1e-5) and not torch.allclose(naive(x), dense)  # on: ≈2
    aware = Mobile().to(DT).eval()
    aware.load_state_dict(net.state_dict())
    masks.prune_(aware, keep)
    assert layers.compensate_bn_(aware, keep, pairs, stats.bn_input_mean) == {"bn1": 1}
    assert torch.equal(aware(x), dense)  # dead stays dead: the function is unchanged
    # a live channel (1) is replaced by its mean pre-activation output
    keep["dw.weight"][1] = False
    live = Mobile().to(DT).eval()
    live.load_state_dict(net.state_dict())
    masks.prune_(live, keep)
    layers.compensate_bn_(live, keep, pairs, stats.bn_input_mean)
    with torch.no_grad():
        mean_out = net.bn1(net.dw(nn.functional.relu6(net.bn0(net.stem(x)))))[:, 1].mean()
        out = live.bn1(live.dw(nn.functional.relu6(live.bn0(live.stem(x)))))[:, 1]
    assert torch.allclose(out, torch.full_like(out, float(mean_out)), rtol=1e-12)
    assert layers.filters_removed(keep["dw.weight"]).tolist() == [True, True, False, False]


def test_bn_aware_uses_the_conv_bias_as_the_removed_output():
    net, x = _dead_net()
    pairs = layers.conv_bn_pairs(net, x[:1])
    stats = layers.channel_stats(net, [(x, None)], sorted(set(pairs.values())))
    keep = {"pw.weight": torch.ones_like(net.pw.weight, dtype=torch.bool)}
    keep["pw.weight"][2] = False
    with torch.no_grad():
        h = net.act(net.bn1(net.dw(nn.functional.relu6(net.bn0(net.stem(x))))))
        want = net.bn2(net.pw(h))[:, 2].mean()
    masks.prune_(net, keep)
    layers.compensate_bn_(net, keep, pairs, stats.bn_input_mean)
    with torch.no_grad():
        got = net.bn2(net.pw(h))[:, 2]
    assert torch.allclose(got, torch.full_like(got, float(want)), rtol=1e-12)


def test_spec_bn_aware_is_a_protocol_option():
    assert ExperimentSpec(bn_aware=True).bn_aware and spec_options()["bn_aware"][1] is False
