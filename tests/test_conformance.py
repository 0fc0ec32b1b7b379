"""Proof on the papers' architectures (issue 11): every registered encoder's architecture, built
offline with random weights (fewer blocks and narrower layers than the real ones, every module
type kept, float64), and every score that accepts it:

* coverage: every weight matrix is scored (the list is written here independently: every
  parameter of two or more dimensions but the position and class embeddings);
* no silent zero: no tensor scores all-zero where the per-example gradients of a ``torch.func``
  reference (vmap of grad) on a few images are non-zero; diag, Fisher–Taylor and SNIP equal the
  reference;
* K-FAC's factors of one layer of each module type equal their definitions (reduce and expand,
  per-example loops, :mod:`tests.brute`);
* the narrow builds keep every module type of the full-size architecture (built on the meta
  device), and every registered encoder has its architecture here;
* the run-time check: a weight the hooks are made blind to is caught (diag falls back to exact
  per-example gradients, K-FAC refuses it by name, a score returning zeros for it is refused);
* the CLIP encoders run end to end on the offline digits suite (112 px) at their fixed 224 px.

The full-size models' timings and memory are a benchmark, not a test: ``bench/bench_archs.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from pai_core import experiment, models
from pai_core import scores as S
from pai_core.results import ExperimentSpec
from tests.brute import kfac_reference

DT = torch.float64
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:There is a performance drop"),  # vmap over fused attention
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _timm_resnet50():
    from timm.models.resnet import Bottleneck, ResNet

    # resnet50's block and stem, one block per stage, narrow: every module type of the real one.
    return ResNet(Bottleneck, (1, 1, 1, 1), num_classes=0, channels=(8, 16, 32, 64), stem_width=8), 64


def _timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0), 32


def _clip_vit():
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(
        image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2, output_dim=16
    ), 32


def _clip_rn50():
    from open_clip.modified_resnet import ModifiedResNet

    return ModifiedResNet(layers=[1, 1, 1, 1], output_dim=16, heads=2, image_size=64, width=8), 64


def _efficientnet_lite0():
    import timm

    # 64 px: at 32 px the last stage is 1x1, where PX's batch-statistics surrogate cannot
    # normalise a batch of one example.
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0), 64


def _mobilenet_v2():
    import torchvision

    return models._TorchvisionMobileNetFeatures(torchvision.models.mobilenet_v2(width_mult=0.25)), 64


def _registered(name: str, size: int):
    """A registered encoder exactly as ``load_encoder`` builds it (the tiny random-weight ones);
    its parameters require gradients, as the brute-force references need (the scores do not)."""
    return lambda: (models.load_encoder(name).model.requires_grad_(True), size)


def _full_size(arch: str) -> nn.Module:
    """The full-size architecture on the meta device (no memory, no time): what the narrow
    builds must match module type for module type."""
    import open_clip
    import timm
    import torchvision

    with torch.device("meta"):
        if arch in ("resnet50", "vit_base_patch16_224"):
            return timm.create_model(arch, pretrained=False, num_classes=0)
        if arch == "efficientnet_lite0":
            return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        if arch == "mobilenet_v2":
            return models._TorchvisionMobileNetFeatures(torchvision.models.mobilenet_v2())
        if arch.startswith("open_clip"):
            clip = {"open_clip ViT-B-16": "ViT-B-16", "open_clip RN50": "RN50"}[arch]
            return open_clip.create_model(clip, pretrained=None, device="meta").visual
        return models.load_encoder(arch).model  # the tiny registered ones are their own full size


#: name: (builder, one weight per module type whose K-FAC factors are checked, with its q/k/v blocks)
ARCHS = {
    "resnet50": (
        _timm_resnet50,
        {
            "0.conv1.weight": 1,  # 7x7 stride-2 stem
            "0.layer1.0.conv1.weight": 1,  # 1x1
            "0.layer2.0.conv2.weight": 1,  # 3x3 stride 2
            "0.layer2.0.downsample.0.weight": 1,  # 1x1 stride 2
            "1.weight": 1,  # head
        },
    ),
    "vit_base_patch16_224": (
        _timm_vit,
        {
            "0.patch_embed.proj.weight": 1,  # patchify conv
            "0.blocks.0.attn.qkv.weight": 3,  # packed q, k, v
            "0.blocks.0.attn.proj.weight": 1,
            "0.blocks.1.mlp.fc1.weight": 1,
            "0.blocks.1.mlp.fc2.weight": 1,
        },
    ),
    "open_clip ViT-B-16": (
        _clip_vit,
        {
            "0.conv1.weight": 1,
            "0.transformer.resblocks.0.attn.in_proj_weight": 3,  # functional, (tokens, batch) rows
            "0.transformer.resblocks.0.attn.out_proj.weight": 1,  # functional, (tokens·batch) rows
            "0.transformer.resblocks.1.mlp.c_fc.weight": 1,
            "0.proj": 1,  # raw x @ proj
        },
    ),
    "open_clip RN50": (
        _clip_rn50,
        {
            "0.conv1.weight": 1,  # 3x3 stride-2 stem
            "0.layer1.0.conv2.weight": 1,
            "0.layer2.0.downsample.0.weight": 1,  # 1x1 after avg-pool
            "0.attnpool.k_proj.weight": 1,  # AttentionPool2d, functional
            "0.attnpool.c_proj.weight": 1,
        },
    ),
    "efficientnet_lite0": (
        _efficientnet_lite0,
        {
            "0.conv_stem.weight": 1,  # TF-same padded stride-2 conv
            "0.blocks.1.0.conv_dw.weight": 1,  # depthwise, stride 2
            "0.blocks.1.0.conv_pwl.weight": 1,
            "0.conv_head.weight": 1,
        },
    ),
    "mobilenet_v2": (
        _mobilenet_v2,
        {
            "0.features.0.0.weight": 1,
            "0.features.2.conv.1.0.weight": 1,  # depthwise
            "0.features.2.conv.2.weight": 1,
            "1.weight": 1,
        },
    ),
    "test_resnet": (_registered("test_resnet", 64), {"0.layer1.0.conv1.weight": 1}),
    "test_vit": (_registered("test_vit", 32), {"0.blocks.0.attn.qkv.weight": 3}),
}

#: Registered encoder: the architecture case that stands for it (the self-supervised ResNet-50s
#: and DINO's ViT-B/16 are timm's resnet50 / vit_base_patch16_224 with other weights).
REGISTERED = {
    "efficientnet_lite0": "efficientnet_lite0",
    "mobilenet_v2": "mobilenet_v2",
    "resnet50": "resnet50",
    "resnet50_mocov2": "resnet50",
    "resnet50_dino": "resnet50",
    "vit_b16_dino": "vit_base_patch16_224",
    "vit_b16_clip": "open_clip ViT-B-16",
    "resnet50_clip": "open_clip RN50",
    "test_resnet": "test_resnet",
    "test_vit": "test_vit",
}

#: Per architecture, a weight the hooks are made blind to (the failure issue 11 found: a weight
#: applied where the hooks do not look), of the module type most at risk.
BLINDED = {
    "resnet50": "0.layer1.0.conv1.weight",
    "vit_base_patch16_224": "0.blocks.0.attn.qkv.weight",
    "open_clip ViT-B-16": "0.transformer.resblocks.0.attn.in_proj_weight",
    "open_clip RN50": "0.attnpool.q_proj.weight",
    "efficientnet_lite0": "0.blocks.1.0.conv_dw.weight",
    "mobilenet_v2": "0.features.2.conv.1.0.weight",
    "test_resnet": "0.layer1.0.conv1.weight",
    "test_vit": "0.blocks.0.attn.qkv.weight",
}

EMBEDDINGS = ("pos_embed", "positional_embedding", "cls_token", "class_embedding")


def _randomise_norms(model: nn.Module, g: torch.Generator) -> None:
    """Random BatchNorm statistics and affine parameters, so that no gradient vanishes by
    construction (zero-initialised residual scales, identity statistics)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.5 * torch.randn(m.num_features, generator=g))
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.weight.data.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))


class Case:
    def __init__(self, arch: str):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        enc, size = ARCHS[arch][0]()
        enc.eval()
        with torch.no_grad():
            feat = enc(torch.zeros(1, 3, size, size)).shape[1]
        self.model = nn.Sequential(enc, nn.Linear(feat, 3)).to(DT).eval()
        with torch.no_grad():
            _randomise_norms(self.model, g)
        xs = torch.randn(3, 3, size, size, generator=g, dtype=DT)
        ys = torch.tensor([0, 2, 1])
        self.data = [(xs[:2], ys[:2]), (xs[2:], ys[2:])]
        self.names = S.default_params(self.model, xs[:1])
        self.ref = self._reference(xs, ys)

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example gradients of every scored weight by torch.func: (N, *shape) each."""
        named = dict(self.model.named_parameters())
        theta = {n: named[n].detach() for n in self.names}

        def one(p, xi, yi):
            out = functional_call(self.model, p, (xi.unsqueeze(0),))
            return S.per_example_loss(out, yi.unsqueeze(0)).sum()

        out = vmap(grad(one), in_dims=(None, 0, 0))(theta, x, y)
        return {n: t.detach() for n, t in out.items()}


@pytest.fixture(scope="module", params=list(ARCHS))
def case(request) -> tuple[str, Case]:
    return request.param, Case(request.param)


def test_every_registered_encoder_has_an_architecture_case():
    assert set(models.available()) == set(REGISTERED), "add the new encoder's architecture here"
    assert set(REGISTERED.values()) == set(ARCHS) == set(BLINDED)


def _types(m: nn.Module) -> set[str]:
    return {f"{type(x).__module__}.{type(x).__qualname__}" for x in m.modules()}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_narrow_builds_keep_every_module_type_of_the_full_architecture(arch):
    torch.manual_seed(0)
    narrow = ARCHS[arch][0]()[0]
    assert _types(narrow) == _types(_full_size(arch)), arch


def test_every_weight_matrix_is_scored(case):
    arch, c = case
    matrices = [
        n for n, p in c.model.named_parameters() if p.dim() >= 2 and not any(e in n for e in EMBEDDINGS)
    ]
    assert c.names == matrices, arch
    if arch == "open_clip ViT-B-16":
        assert "0.proj" in c.names and "0.transformer.resblocks.0.attn.in_proj_weight" in c.names


@pytest.mark.parametrize("score", S.available())
def test_every_score_covers_every_weight_matrix_and_never_zeroes_a_live_one(case, score):
    arch, c = case
    opts = {"probes": 2} if score == "hutchinson" else {}
    d: dict = {}
    try:
        got = S.compute(score, c.model, c.data, params=c.names, diagnostics=d, **opts)
    except ValueError as exc:  # a score may refuse an architecture, with its registered reason
        reasons = S.info(score).refuses.values()
        assert reasons and any(r in str(exc) for r in reasons), (arch, score, exc)
        return
    assert list(got) == c.names
    assert "unreached_params" not in d
    for n in c.names:
        theta = c.model.get_parameter(n).detach()
        pe = c.ref[n]
        assert torch.isfinite(got[n]).all(), (arch, score, n)
        if S.info(score).data_driven and bool(pe.any()) and bool(theta.any()):
            assert bool(got[n].any()), f"{score} scores {n} all-zero on {arch}; its gradient is not"
        if score == "diag":
            ref = theta**2 * (pe**2).mean(0)
            assert torch.allclose(got[n], ref, rtol=1e-8, atol=1e-12 * float(ref.detach().abs().max())), (
                arch,
                n,
            )
        elif score == "fisher_taylor":
            ref = (theta * pe.mean(0) + 0.5 * theta**2 * (pe**2).mean(0)).abs()
            assert torch.allclose(got[n], ref, rtol=1e-8, atol=1e-12 * float(ref.detach().abs().max())), (
                arch,
                n,
            )
        elif score == "snip":
            ref = (theta * pe.mean(0)).abs()
            assert torch.allclose(got[n], ref, rtol=1e-8, atol=1e-12 * float(ref.detach().abs().max())), (
                arch,
                n,
            )
    if score == "kfac":
        assert set(d["kfac_scale_ratio"]) == set(c.names)


@pytest.mark.parametrize("approx", ["reduce", "expand"])
def test_kfac_factors_of_each_module_type_match_their_definition(case, approx):
    arch, c = case
    layers = ARCHS[arch][1]
    f = S.kfac_factors(c.model, c.data, params=c.names, approx=approx)
    for name, blocks in layers.items():
        if approx == "reduce" and name.endswith("k_proj.weight"):
            # Softmax ignores a vector added to every key, so Σ_t ∂ℓ/∂k_t = 0: reduce's B of a
            # key projection is rounding noise (why "auto" uses expand for linear layers).
            expand = S.kfac_factors(c.model, c.data, params=[name], approx="expand")[name]
            assert float(f[name].B.abs().max()) <= 1e-12 * float(expand.B.abs().max())
            continue
        A, B = kfac_reference(c.model, c.data, name, approx, blocks)
        assert f[name].A.shape == A.shape and f[name].B.shape == B.shape, (arch, name)
        for got, want in ((f[name].A, A), (f[name].B, B)):
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-13 * float(want.abs().max())), (arch, name)


def test_a_weight_the_hooks_miss_is_never_scored_zero(case, monkeypatch):
    """Make the hooks blind to one weight (as they were to open_clip's attention pool and MHA
    in_proj): the probe must notice, diag must fall back to exact per-example gradients (equal
    to the torch.func reference), K-FAC must refuse that weight by name, and a score that
    returns zeros for it without saying what it saw must be refused by ``compute``."""
    from pai_core.scores import _sites
    from pai_core.scores._registry import _REGISTRY

    arch, c = case
    blind = BLINDED[arch]
    real = _sites._Recorder._parse

    def parse(self, func, args, kwargs):
        call = real(self, func, args, kwargs)
        return None if call is not None and call.ref.name == blind else call

    monkeypatch.setattr(_sites._Recorder, "_parse", parse)
    got = S.compute("diag", c.model, c.data, params=c.names)
    theta = c.model.get_parameter(blind).detach()
    ref = theta**2 * (c.ref[blind] ** 2).mean(0)
    assert bool(ref.any())
    assert torch.allclose(got[blind], ref, rtol=1e-8, atol=1e-12 * float(ref.abs().max())), arch
    with pytest.raises(ValueError, match=rf"K-FAC has no factors for \[{blind!r}\]"):
        S.compute("kfac", c.model, c.data, params=c.names)

    @S.register_score("zero_for_missed", label="zero for missed", data_driven=True)
    def zero_for_missed(call):
        "A score that scores the weight it cannot see zero (tests only)."
        return {n: torch.zeros_like(p) if n == blind else p.detach() ** 2 for n, p in call.named.items()}

    try:
        with pytest.raises(RuntimeError, match=rf"zero_for_missed.*{blind}.*refusing to score them zero"):
            S.compute("zero_for_missed", c.model, c.data, params=c.names)
    finally:
        _REGISTRY.pop("zero_for_missed")


# --------------------------------------------------------------------------------------
# The CLIP encoders end to end on an offline suite
# --------------------------------------------------------------------------------------


@pytest.fixture
def narrow_open_clip(monkeypatch):
    """open_clip.create_model builds the named architecture with fewer and narrower layers
    (same module types, same 224 px input and position embeddings), for CI speed."""
    import open_clip

    real = open_clip.create_model
    small = {
        "ViT-B-16": {"image_size": 224, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32},
        "RN50": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 8},
    }
    text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}

    def create_model(arch, pretrained=None, **kw):
        return real(arch, pretrained=pretrained, embed_dim=32, vision_cfg=small[arch], text_cfg=text, **kw)

    monkeypatch.setattr(open_clip, "create_model", create_model)
    return create_model


@pytest.mark.parametrize(("model", "arch"), [("vit_b16_clip", "ViT-B-16"), ("resnet50_clip", "RN50")])
def test_clip_encoders_run_on_the_digits_suite_at_their_fixed_size(
    model, arch, narrow_open_clip, tmp_path, capsys
):
    """Random-weight safetensors checkpoints of the registered CLIP encoders through
    ``python -m pai_core run --suite digits --checkpoint …``: the suite asks for 112 px, the
    position embeddings are learned for 224 px; the run feeds 224 px and says so, and K-FAC
    scores every weight matrix (in_proj, the raw projection, the attention pool) non-zero.

    The architectures are narrowed (``narrow_open_clip``: 2 blocks / one block per stage, narrow
    widths, every module type and the 224 px input kept) for CI speed; the README ("Fixed input
    sizes") gives the same command for the full-size random-weight checkpoints."""
    from safetensors.torch import save_file

    from pai_core.__main__ import main

    torch.manual_seed(0)
    ckpt = tmp_path / f"{model}.safetensors"
    save_file({k: v.contiguous() for k, v in narrow_open_clip(arch).visual.state_dict().items()}, str(ckpt))
    enc = models.load_encoder(model, checkpoint=ckpt)
    assert enc.fixed_size and enc.input_size == 224 and enc.size_for(112) == 224
    spec = ExperimentSpec(
        model=model, checkpoint=str(ckpt), score="kfac", sparsity=0.5, images_per_class=2, device="cpu"
    )
    with pytest.raises(ValueError, match="224 px inputs only"):
        experiment.prepare(spec.replace(image_size=112))
    ctx = experiment.prepare(spec)
    assert ctx.image_size == 224 and ctx.inputs(0)[0].shape[-1] == 224
    sc = experiment.get_scores(ctx)
    x = ctx.inputs(0)[0][:1]
    assert list(sc) == S.default_params(enc.model, x)
    assert all(bool(t.any()) for t in sc.values())
    diag = experiment.get_score_diagnostics(ctx)
    assert set(diag["kfac_scale_ratio"]) == {f"encoder.{n}" for n in sc}
    out = tmp_path / "run.json"
    argv = [
        "run",
        "--model",
        model,
        "--suite",
        "digits",
        "--checkpoint",
        str(ckpt),
        "--images-per-class",
        "2",
    ]
    assert main([*argv, "--score", "kfac", "--sparsity", "0.5", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images fed at 224 px" in printed, printed
    res = json.loads(out.read_text())
    res = res[0] if isinstance(res, list) else res
    assert any("224 px" in note for note in res["notes"])
    assert all(0.0 <= t["zero_shot"] <= 1.0 for t in res["tasks"])
