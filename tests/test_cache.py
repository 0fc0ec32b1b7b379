import multiprocessing as mp
import os
import time

import pytest
import torch

from pai_core import cache


def test_spec_key_is_stable_and_order_insensitive():
    a = cache.spec_key("scores", {"b": 1, "a": [1, 2], "c": None})
    assert a == cache.spec_key("scores", {"c": None, "a": [1, 2], "b": 1})
    assert a != cache.spec_key("scores", {"b": 2, "a": [1, 2], "c": None})
    assert a != cache.spec_key("masks", {"b": 1, "a": [1, 2], "c": None})
    assert a.startswith("scores-")


def test_roundtrip_and_checksum(fresh_cache):
    path = fresh_cache / "x.safetensors"
    t = {"w": torch.arange(10.0), "m": torch.tensor([True, False])}
    cache.save_tensors(path, t, meta={"spec": {"a": 1}})
    back, meta = cache.load_tensors(path)
    assert torch.equal(back["w"], t["w"]) and torch.equal(back["m"], t["m"])
    assert meta == {"spec": {"a": 1}}
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip one payload bit
    path.write_bytes(bytes(data))
    with pytest.raises(cache.CacheCorrupt):
        cache.load_tensors(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_entry_is_recomputed_not_trusted(fresh_cache, damage):
    calls = []

    def compute():
        calls.append(1)
        return {"v": torch.full((1000,), 3.0)}

    cache.cached_tensors("scores", {"k": 1}, compute)
    (path,) = list((fresh_cache / "scores").glob("*.safetensors"))
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": b"not a file", "empty": b""}[damage])
    out = cache.cached_tensors("scores", {"k": 1}, compute)
    assert len(calls) == 2 and torch.equal(out["v"], torch.full((1000,), 3.0))
    out = cache.cached_tensors("scores", {"k": 1}, compute)
    assert len(calls) == 2  # and the repaired entry is trusted again


def test_json_entries_are_verified(fresh_cache):
    v = cache.cached_json("results", {"a": 1}, lambda: {"acc": [0.5, 1.0]})
    (path,) = list((fresh_cache / "results").glob("*.json"))
    assert cache.load_json(path) == v
    path.write_text(path.read_text().replace("0.5", "0.9"))
    with pytest.raises(cache.CacheCorrupt):
        cache.load_json(path)


def test_interrupted_write_leaves_no_file(fresh_cache, monkeypatch):
    path = fresh_cache / "y.safetensors"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        cache.save_tensors(path, {"a": torch.ones(3)})
    assert not path.exists()
    assert not list(fresh_cache.glob("*.tmp")) and not list(fresh_cache.glob(".*tmp"))


def _worker(cache_dir: str, counter: str, out: mp.Queue) -> None:
    os.environ["PAI_CACHE_DIR"] = cache_dir

    def compute():
        with open(counter, "a") as fh:
            fh.write("x")
        time.sleep(1.0)  # long enough that the other process arrives while this one computes
        return {"v": torch.arange(5.0)}

    out.put(cache.cached_tensors("masks", {"same": "key"}, compute)["v"].tolist())


def test_two_processes_same_key_compute_once(fresh_cache, tmp_path):
    counter = tmp_path / "count"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(fresh_cache), str(counter), q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [[0.0, 1.0, 2.0, 3.0, 4.0]] * 2
    assert counter.read_text() == "x"


def test_usage_and_clear(fresh_cache):
    cache.cached_json("results", {"a": 1}, lambda: 1)
    assert cache.usage()["results"]["entries"] == 1
    assert cache.clear("results") >= 1
    assert cache.usage()["results"]["entries"] == 0
