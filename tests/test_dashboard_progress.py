"""dashboard.common's progress panel and job caption, against a recording stand-in for Streamlit."""

from __future__ import annotations

from dashboard import common
from pai_core.results import ExperimentSpec


class _Slot:
    """Records what a Streamlit element would show: the last progress/caption call."""

    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name
        self.value: tuple | None = None

    def progress(self, frac: float, text: str = "") -> _Slot:
        self.value = ("progress", frac, text)
        self.log.append((self.name, frac, text))
        return self

    def caption(self, text: str) -> _Slot:
        self.value = ("caption", text)
        self.log.append((self.name, text))
        return self

    def empty(self) -> _Slot:
        self.value = None
        return self


class _Box:
    """A container: every element it creates is a numbered slot; ``container()`` makes a new box."""

    def __init__(self, log: list, name: str = "box") -> None:
        self.log, self.name, self.slots, self.boxes = log, name, [], []

    def container(self, **_: object) -> _Box:
        box = _Box(self.log, f"{self.name}.{len(self.boxes)}")
        self.boxes.append(box)
        return box

    def empty(self) -> _EmptySlot:
        slot = _EmptySlot(self.log, f"{self.name}/{len(self.slots)}")
        self.slots.append(slot)
        return slot

    def progress(self, frac: float, text: str = "") -> _Slot:
        slot = _Slot(self.log, f"{self.name}/{len(self.slots)}")
        self.slots.append(slot)
        return slot.progress(frac, text)


class _EmptySlot(_Slot):
    """``st.empty()``: holds one element; ``container()`` replaces its content with a new box."""

    def container(self) -> _Box:
        self.box = _Box(self.log, f"{self.name}[c]")
        return self.box


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _panel(runs: int = 2) -> tuple[common.ProgressPanel, _Box, _Clock]:
    clock = _Clock()
    root = _Box([])
    return common.ProgressPanel(root, runs=runs, min_interval=0.0, clock=clock), root, clock


def _bars(panel: common.ProgressPanel) -> dict[str, str]:
    return {stage: slot.value[2] for stage, slot in panel._bars.items() if slot.value}


def test_stage_bars_show_elapsed_time_and_time_left() -> None:
    panel, _, clock = _panel()
    panel.start_run(0, "run A")
    panel("fine-tune", 0, 10, "epoch 1/5")
    clock.t += 30
    panel("fine-tune", 3, 10, "epoch 2/5")
    text = _bars(panel)["fine-tune"]
    # 30 s for 3 of 10 steps: 70 s left.
    assert "30 s elapsed" in text and "about 1 min 10 s left" in text and "epoch 2/5" in text
    clock.t += 70
    panel("fine-tune", 10, 10, "epoch 5/5")
    assert "done in 1 min 40 s" in _bars(panel)["fine-tune"]


def test_each_run_starts_with_fresh_bars_and_the_job_line_estimates_the_rest() -> None:
    panel, root, clock = _panel(runs=3)
    panel.start_run(0, "run A")
    panel("fine-tune", 10, 10, "done")
    first_box = panel._stage_box
    clock.t += 60
    panel.start_run(1, "run B")
    # The finished fine-tuning bar of run A is gone: run B draws into a new box, with no bars yet.
    assert panel._stage_box is not first_box and _bars(panel) == {}
    job_line = root.boxes[0].slots[0].value[1]
    assert "1 min elapsed" in job_line and "about 2 min left" in job_line  # 60 s per run, 2 runs to go
    panel("scores", 1, 2, "")
    assert set(_bars(panel)) == {"scores"}


def test_describe_specs_names_tasks_and_the_real_device() -> None:
    spec = ExperimentSpec(suite="fashion-mnist", images_per_class=20, finetune="cpu")
    text = common.describe_specs([spec, spec], ["fashion 0-4", "fashion 5-9"])
    assert "source fashion 0-4; transfer fashion 5-9" in text
    assert "device auto" not in text and ("CPU" in text or "cuda" in text)
    assert common.duration_text(8.2) == "8 s" and common.duration_text(3725) == "1 h 2 min"
