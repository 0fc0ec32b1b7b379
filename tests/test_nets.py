"""Small CNNs for training from scratch: shapes at 28/32 px, seeded init, He-init scale, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pai_core import nets


@pytest.mark.parametrize("name", nets.available())
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_every_net_runs_on_fashion_and_cifar_shapes(name, channels, size):
    width = 0.25 if name.startswith("vgg") else 1.0  # keeps the full VGGs cheap here
    net = nets.create(name, in_channels=channels, num_classes=7, width=width, seed=0)
    out = net(torch.randn(3, channels, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_resnet20_is_he_et_al_size():
    # He et al. (2016), Table 6: ResNet-20 has 0.27M parameters (projection shortcuts add 2.7k).
    net = nets.create("resnet20", in_channels=3, num_classes=10)
    n = sum(p.numel() for p in net.parameters())
    assert 0.265e6 < n < 0.275e6
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # 6n + 1 conv layers (+ the linear layer = 20)
    assert [c.out_channels for c in convs][::6] == [16, 16, 32, 64]


def test_width_scales_channels_and_ceil_pooling_reaches_1px_at_28():
    net = nets.create("vgg11", in_channels=1, width=0.25)
    convs = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 32, 64, 64, 128, 128, 128, 128]
    assert net.features(torch.zeros(2, 1, 28, 28)).shape[-2:] == (1, 1)
    assert net.features(torch.zeros(2, 1, 32, 32)).shape[-2:] == (1, 1)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = nets.create("test_resnet", seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = nets.create("test_resnet", seed=5)
    c = nets.create("test_resnet", seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


def test_kaiming_normal_scale_and_torch_default_differs():
    net = nets.create("resnet20", seed=0)
    conv = net.layer3[0].conv2  # 64 x 64 x 3 x 3: 36,864 draws
    fan_in = conv.in_channels * 9
    std = conv.weight.std().item()
    assert abs(std - math.sqrt(2 / fan_in)) / math.sqrt(2 / fan_in) < 0.02
    assert abs(conv.weight.mean().item()) < 0.01 * std * 10
    bn = net.layer3[0].bn2
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(
        bn.bias, torch.zeros_like(bn.bias)
    )
    default = nets.create("resnet20", seed=0, init="torch_default").layer3[0].conv2.weight
    # PyTorch's kaiming_uniform_(a=√5): bound 1/√fan_in, std 1/√(3·fan_in)
    assert abs(default.std().item() - 1 / math.sqrt(3 * fan_in)) / (1 / math.sqrt(3 * fan_in)) < 0.03


def test_prunable_weights_follow_the_papers_scope():
    net = nets.create("test_resnet")
    conv = nets.prunable_weights(net, "conv")
    both = nets.prunable_weights(net, "conv+linear")
    assert "fc.weight" not in conv and set(both) - set(conv) == {"fc.weight"}
    assert all(n.endswith("weight") and "bn" not in n for n in conv)
    assert any("shortcut" in n for n in conv)
    with pytest.raises(ValueError, match="conv\\+linear"):
        nets.prunable_weights(net, "bias")


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="resnet20"):
        nets.create("resnet18")
    with pytest.raises(ValueError, match="kaiming_normal"):
        nets.create("resnet20", init="xavier")
    with pytest.raises(ValueError):
        nets.create("resnet20", width=0)
    assert "test_resnet" not in nets.available(include_test=False)
