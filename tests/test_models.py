import glob
import os
import time

import pytest
import timm
import torch
from PIL import Image

from pai_core import models


def _foolbox_photos():
    import foolbox

    files = sorted(glob.glob(os.path.join(os.path.dirname(foolbox.__file__), "data", "imagenet_*")))
    assert len(files) == 20, "foolbox ships 20 ImageNet validation photos"
    labels = [int(f.rsplit("_", 1)[1].split(".")[0]) for f in files]
    return files, labels


def test_registry_lists_paper_and_offline_models():
    names = models.available()
    for n in [
        "efficientnet_lite0",
        "mobilenet_v2",
        "resnet50",
        "resnet50_mocov2",
        "resnet50_dino",
        "vit_b16_dino",
        "vit_b16_clip",
        "test_resnet",
        "test_vit",
    ]:
        assert n in names
    assert models.DEFAULT_MODEL == "efficientnet_lite0"
    assert {e.name for e in models.entries() if e.paper} == {
        "resnet50",
        "resnet50_mocov2",
        "resnet50_dino",
        "vit_b16_dino",
        "vit_b16_clip",
    }


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        models.load_encoder("resnet5O")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_offline_weights_are_real_imagenet_weights(name):
    """With its original head, the model gets >= 15 of foolbox's 20 real ImageNet photos right."""
    enc = models.load_encoder(name)
    files, labels = _foolbox_photos()
    tf = enc.transform()
    x = torch.stack([tf(Image.open(f)) for f in files])
    with torch.no_grad():
        feats = enc.model(x)
        pred = enc.classifier(feats).argmax(1).tolist()
    assert feats.shape == (20, enc.feature_dim)
    correct = sum(p == t for p, t in zip(pred, labels, strict=True))
    assert correct >= 15, f"{name}: only {correct}/20 correct"
    assert enc.family == "cnn" and enc.weights_id.startswith("sha256:")
    assert not any(p.requires_grad for p in enc.model.parameters())


@pytest.mark.parametrize("name,family", [("test_resnet", "cnn"), ("test_vit", "vit")])
def test_tiny_test_models_are_deterministic(name, family):
    a, b = models.load_encoder(name), models.load_encoder(name)
    assert a.family == family
    x = torch.randn(2, 3, a.input_size, a.input_size)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
        assert a.model(x).shape == (2, a.feature_dim)


@pytest.mark.parametrize("name", ["resnet50", "resnet50_mocov2", "vit_b16_dino", "vit_b16_clip"])
def test_hub_models_fail_fast_offline_with_instructions(name):
    if models._host_reachable("huggingface.co", timeout=1.0):
        pytest.skip("this machine reaches the model hub; the offline message cannot be observed")
    t = time.monotonic()
    with pytest.raises(models.ModelUnavailable) as info:
        models.load_encoder(name)
    assert time.monotonic() - t < 20
    msg = str(info.value)
    assert name in msg and "checkpoint" in msg and "efficientnet_lite0" in msg


def _resnet_state(prefix: str = "") -> dict:
    torch.manual_seed(1)
    net = timm.create_model("resnet50", pretrained=False)
    return {prefix + k: v for k, v in net.state_dict().items()}


def test_local_checkpoint_loads_offline(tmp_path):
    state = _resnet_state()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    enc = models.load_encoder("resnet50", checkpoint=path)
    assert enc.feature_dim == 2048 and enc.weights_id.startswith("sha256:")
    assert torch.equal(enc.model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


@pytest.mark.parametrize(
    "name,prefix,wrap", [("resnet50_mocov2", "module.encoder_q.", "state_dict"), ("resnet50_dino", "", None)]
)
def test_author_checkpoint_keys_are_converted(tmp_path, name, prefix, wrap):
    state = _resnet_state(prefix)
    obj = {wrap: state, "epoch": 800} if wrap else state
    path = tmp_path / "ck.pth"
    torch.save(obj, path)
    enc = models.load_encoder(name, checkpoint=path)
    assert torch.equal(enc.model.state_dict()["conv1.weight"], state[prefix + "conv1.weight"])


def test_checkpoint_dir_env_var(tmp_path, monkeypatch):
    torch.save(_resnet_state(), tmp_path / "resnet50.pth")
    monkeypatch.setenv("PAI_CHECKPOINT_DIR", str(tmp_path))
    assert models.load_encoder("resnet50").weights_id.startswith("sha256:")


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(models.ModelUnavailable, match="not found"):
        models.load_encoder("resnet50", checkpoint=tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(models.ModelUnavailable, match="could not read"):
        models.load_encoder("resnet50", checkpoint=corrupt)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(models.ModelUnavailable, match="does not fit"):
        models.load_encoder("resnet50", checkpoint=wrong)


def test_generic_timm_scheme_and_copy():
    with pytest.raises(ValueError, match="timm has no model"):
        models.load_encoder("timm:not_a_model")
    enc = models.load_encoder("test_resnet")
    c = enc.copy()
    with torch.no_grad():
        next(c.model.parameters()).zero_()
    assert next(enc.model.parameters()).abs().sum() > 0


def test_fixed_input_sizes_are_known():
    """ViTs whose position embeddings fix the input size say so; every suite then feeds them
    that size (the CLIP encoders end to end: tests/test_conformance.py)."""
    vit = models._timm_encoder("vit", "vit_base_patch16_224", None, hub_ok=False)
    assert vit.fixed_size and vit.size_for(112) == 224
    for name in ("test_resnet", "test_vit", "efficientnet_lite0"):  # test_vit: dynamic image size
        enc = models.load_encoder(name)
        assert not enc.fixed_size and enc.size_for(112) == 112 and enc.size_for(None) == enc.input_size
