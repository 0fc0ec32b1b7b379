"""Small CNNs with BatchNorm, randomly initialised from a seed, for training from scratch.

The scalable second-order PaI paper (Gollini Navarrete et al., 2025, arXiv 2502.11450) scores a
*randomly initialised* network, prunes it once and trains it from scratch.  Its code trains
CIFAR ResNets and VGGs; this registry holds the CPU-sized versions used here:

* ``resnet20`` / ``resnet32`` / ``resnet56``: He et al. (2016, Sec. 4.2) CIFAR ResNets, a 3x3
  stem of 16 channels, three stages of ``n`` basic blocks (16, 32, 64 channels, stride 2 at the
  start of stages 2 and 3), global average pooling and one linear layer; ``6n + 2`` layers.
  Shortcuts that change shape are 1x1 conv + BatchNorm projections ("option B", as the PaI
  reference code of SynFlow and GraSP does), so the shortcut convs are prunable weights too.
* ``vgg11`` / ``vgg16``: the CIFAR VGGs of the paper's code (configurations from
  kuangliu/pytorch-cifar), conv-BN-ReLU, max pooling, global average pooling, one linear layer.
  Pooling uses ``ceil_mode`` so 28-px inputs (Fashion-MNIST) shrink 28→14→7→4→2→1 where
  32-px inputs shrink 32→16→8→4→2→1 exactly as the original.  Convs carry no bias (a bias
  before BatchNorm is cancelled by its mean subtraction); the paper's code keeps one, unpruned.
* ``test_resnet`` / ``test_vgg``: tiny versions so tests run in seconds on a CPU.

Every builder takes ``in_channels`` (1 for Fashion-MNIST, 3 for CIFAR), ``num_classes`` and a
``width`` multiplier on every channel count (``width=0.25`` gives a VGG narrowed for CPUs).

Initialisation (``init``): ``"kaiming_normal"`` (default) draws every Conv/Linear weight from
``N(0, 2/fan_in)`` (He et al., 2015), biases 0, BatchNorm γ = 1, β = 0, as the CIFAR ResNet code
that GraSP and SynFlow build on does; ``"torch_default"`` keeps PyTorch's own initialisation
(``kaiming_uniform_(a=√5)``), which is what the paper's released code uses (it sets no init).

Example:
    >>> net = create("test_resnet", in_channels=1, num_classes=10, seed=0)
    >>> import torch
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "INITS",
    "NetInfo",
    "available",
    "info",
    "create",
    "register_net",
    "kaiming_init_",
    "prunable_weights",
    "CifarResNet",
    "VGG",
]

#: Initialisations accepted by :func:`create`.
INITS = ("kaiming_normal", "torch_default")


@dataclass(frozen=True)
class NetInfo:
    """Registry entry of one network.

    Attributes:
        name: Registry name.
        family: ``"resnet"`` or ``"vgg"``.
        description: One line for menus and ``list`` commands.
        test_only: Tiny network meant for tests and smoke runs.
        builder: ``builder(in_channels, num_classes, width) -> nn.Module``.
    """

    name: str
    family: str
    description: str
    test_only: bool
    builder: Callable[[int, int, float], nn.Module]


_REGISTRY: dict[str, NetInfo] = {}


def register_net(name: str, *, family: str, description: str, test_only: bool = False):
    """Decorator adding ``builder(in_channels, num_classes, width)`` to the registry as ``name``."""

    def deco(fn: Callable[[int, int, float], nn.Module]) -> Callable[[int, int, float], nn.Module]:
        _REGISTRY[name] = NetInfo(name, family, description, test_only, fn)
        return fn

    return deco


def available(include_test: bool = True) -> list[str]:
    """Registered network names (test networks last, or left out with ``include_test=False``)."""
    names = [n for n, i in _REGISTRY.items() if not i.test_only]
    return names + ([n for n, i in _REGISTRY.items() if i.test_only] if include_test else [])


def info(name: str) -> NetInfo:
    """Registry entry of ``name``; unknown name → ``ValueError`` listing the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; valid: {', '.join(available())}")
    return _REGISTRY[name]


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


# --------------------------------------------------------------------------------------
# ResNet (He et al. 2016, CIFAR variant)
# --------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet: stem, three stages of ``blocks`` basic blocks, GAP, linear.

    Args:
        blocks: Basic blocks per stage (``n``; depth ``6n + 2``).
        widths: Channels of the three stages (16, 32, 64 in the paper, times the width factor).
        in_channels: Input channels.
        num_classes: Outputs.
    """

    def __init__(self, blocks: int, widths: Sequence[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and b == 0) else 1))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet(blocks: int, base: Sequence[int] = (16, 32, 64)):
    def build(in_channels: int, num_classes: int, width: float) -> nn.Module:
        return CifarResNet(blocks, [_scaled(c, width) for c in base], in_channels, num_classes)

    return build


for _depth in (20, 32, 56):
    register_net(
        f"resnet{_depth}",
        family="resnet",
        description=f"ResNet-{_depth} (He et al. 2016, CIFAR): 3 stages x {(_depth - 2) // 6} blocks, "
        "16-32-64 channels x width",
    )(_resnet((_depth - 2) // 6))
register_net(
    "test_resnet",
    family="resnet",
    description="tiny ResNet (1 block per stage, 4-8-16 channels): tests only",
    test_only=True,
)(_resnet(1, (4, 8, 16)))


# --------------------------------------------------------------------------------------
# VGG (CIFAR variant, with BatchNorm)
# --------------------------------------------------------------------------------------

_VGG_CFG: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "test_vgg": [8, "M", 16, "M", 32, "M"],
}


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm: conv3x3-BN-ReLU blocks, 2x2 max pooling (ceil mode), GAP, linear.

    Args:
        cfg: Channel counts and ``"M"`` for pooling.
        in_channels: Input channels.
        num_classes: Outputs.
    """

    def __init__(self, cfg: Sequence[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [
                    nn.Conv2d(cin, int(v), 3, padding=1, bias=False),
                    nn.BatchNorm2d(int(v)),
                    nn.ReLU(),
                ]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _vgg(name: str):
    def build(in_channels: int, num_classes: int, width: float) -> nn.Module:
        cfg = [v if v == "M" else _scaled(int(v), width) for v in _VGG_CFG[name]]
        return VGG(cfg, in_channels, num_classes)

    return build


register_net(
    "vgg11",
    family="vgg",
    description="VGG-11 with BatchNorm (CIFAR, the paper's code): 8 convs, 64-512 channels x width",
)(_vgg("vgg11"))
register_net(
    "vgg16",
    family="vgg",
    description="VGG-16 with BatchNorm (CIFAR, the paper's code): 13 convs, 64-512 channels x width",
)(_vgg("vgg16"))
register_net(
    "test_vgg", family="vgg", description="tiny VGG (3 convs, 8-32 channels): tests only", test_only=True
)(_vgg("test_vgg"))


# --------------------------------------------------------------------------------------
# construction and initialisation
# --------------------------------------------------------------------------------------


def kaiming_init_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """He initialisation in place: Conv/Linear weights ``~ N(0, 2/fan_in)``, biases 0, BN γ=1, β=0.

    ``std = √2 / √fan_in`` with ``fan_in = in_channels/groups · kh · kw`` (He et al., 2015,
    Eq. (10)), keeping the activations' variance through ReLU layers at initialisation.

    Args:
        model: Network to initialise.
        generator: Random source (default: PyTorch's global one).

    Returns:
        ``model``.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def create(
    name: str,
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    width: float = 1.0,
    seed: int = 0,
    init: str = "kaiming_normal",
) -> nn.Module:
    """A freshly initialised network from the registry; the same arguments give the same weights.

    The global RNG is left as it was (construction runs under a forked RNG state).

    Args:
        name: One of :func:`available`.
        in_channels: 1 (Fashion-MNIST) or 3 (CIFAR); any positive count works.
        num_classes: Number of outputs.
        width: Multiplier on every channel count (> 0).
        seed: Seed of the initial weights.
        init: One of :data:`INITS`.

    Returns:
        The network, in train mode, on the CPU, float32.

    Raises:
        ValueError: Unknown name or init, or a non-positive size.
    """
    entry = info(name)
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if in_channels < 1 or num_classes < 1 or not (width > 0 and math.isfinite(width)):
        raise ValueError(
            f"in_channels and num_classes must be >= 1 and width > 0, got {in_channels}, {num_classes}, {width}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = entry.builder(int(in_channels), int(num_classes), float(width))
        if init == "kaiming_normal":
            kaiming_init_(model)
    return model


def prunable_weights(model: nn.Module, layers: str = "conv") -> list[str]:
    """Names of the weights a pruning mask covers, in ``named_parameters`` order.

    Args:
        model: The network.
        layers: ``"conv"``: every Conv weight, as the paper's code (it skips biases, BatchNorm
            and the final linear layer); ``"conv+linear"``: Conv and Linear weights.

    Returns:
        Parameter names.

    Raises:
        ValueError: Unknown ``layers``.
    """
    kinds: tuple[type[nn.Module], ...]
    if layers == "conv":
        kinds = (nn.modules.conv._ConvNd,)
    elif layers == "conv+linear":
        kinds = (nn.modules.conv._ConvNd, nn.Linear)
    else:
        raise ValueError(f"unknown layers {layers!r}; valid: conv, conv+linear")
    wanted = {
        id(m.weight) for m in model.modules() if isinstance(m, kinds) and isinstance(m.weight, nn.Parameter)
    }
    return [n for n, p in model.named_parameters() if id(p) in wanted]
