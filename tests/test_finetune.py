import pytest
import torch
from torch import nn

from pai_core import finetune as ft
from pai_core.experiment import get_encoder, get_suite
from pai_core.features import task_inputs


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_schedules():
    assert ft.schedule("paper").milestone_epochs() == [30, 60, 80]
    assert ft.schedule("paper").lr_for("resnet50") == 5e-5
    assert ft.schedule("paper").lr_for("vit_b16_dino") == 1e-4
    assert ft.schedule("paper").epochs == 90 and ft.schedule("paper").momentum == 0.9
    with pytest.raises(ValueError, match="paper"):
        ft.schedule("long")


def test_masked_weights_stay_exactly_zero_and_bn_stats_frozen():
    torch.manual_seed(0)
    net, head = _Net(), nn.Linear(6, 3, bias=False)
    masks = {
        "conv.weight": torch.rand_like(net.conv.weight) > 0.5,
        "fc.weight": torch.rand_like(net.fc.weight) > 0.3,
    }
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _data()
    cfg = ft.FinetuneConfig(name="t", epochs=4, lr=0.05, batch_size=8)
    log = ft.finetune(net, head, x, y, masks, cfg)
    for name, m in masks.items():
        w = dict(net.named_parameters())[name]
        assert torch.all(w[~m] == 0), "a pruned weight was revived by momentum or weight decay"
        assert not torch.equal(w[m], before[name][m]), "kept weights should train"
    assert torch.equal(net.bn.running_mean, before["bn.running_mean"])
    assert torch.equal(net.bn.running_var, before["bn.running_var"])
    assert len(log["losses"]) == 4 and log["losses"][-1] < log["loss_before"]
    assert all(not p.requires_grad or p.grad is None for p in net.parameters())


def test_out_of_memory_retries_with_a_smaller_batch(monkeypatch):
    calls = []
    real = ft._train

    def flaky(model, head, inputs, labels, masks, config, batch_size, *a):
        calls.append(batch_size)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, head, inputs, labels, masks, config, batch_size, *a)

    monkeypatch.setattr(ft, "_train", flaky)
    x, y = _data()
    with pytest.warns(UserWarning, match="out of memory"):
        log = ft.finetune(
            _Net(), nn.Linear(6, 3, bias=False), x, y, {}, ft.FinetuneConfig(epochs=1, lr=0.01, batch_size=16)
        )
    assert calls == [16, 8] and log["batch_size"] == 8 and "out of memory" in log["notes"][0]


def test_finetuning_lowers_the_source_loss_on_real_data():
    """EfficientNet-Lite0 on real digits, through a ridge head, two short epochs."""
    from pai_core import ridge
    from pai_core.evaluate import Heads

    enc = get_encoder("efficientnet_lite0")
    suite = get_suite("digits", images_per_class=8)
    x, y = task_inputs(suite.tasks[0], enc, image_size=64)
    model = enc.copy().model
    with torch.no_grad():
        phi = model(x)
    head = Heads([ridge.fit(phi, y, 5)], False, 0, 1.0).module(0)
    # Prune half of the first conv's weights so there is something to recover.
    w = dict(model.named_parameters())["conv_stem.weight"]
    mask = {"conv_stem.weight": torch.rand_like(w) > 0.5}
    with torch.no_grad():
        w.mul_(mask["conv_stem.weight"])
    log = ft.finetune(model, head, x, y, mask, ft.schedule("smoke"))
    assert log["losses"][-1] < log["loss_before"]


def test_log_records_the_loss_of_the_final_weights_measured_like_the_first():
    torch.manual_seed(0)
    net, head = _Net(), nn.Linear(6, 3, bias=False)
    x, y = _data()
    cfg = ft.FinetuneConfig(name="t", epochs=3, lr=0.05, batch_size=8)
    log = ft.finetune(net, head, x, y, {}, cfg)
    # Brute force: the eval-mode loss of the final weights over the whole task.
    net.eval()
    with torch.no_grad():
        expected = float(ft.mse_loss(head(net(x)), y))
    assert log["loss_after"] == pytest.approx(expected, rel=1e-5)
    assert len(log["losses"]) == 3 and log["loss_after"] < log["loss_before"]
