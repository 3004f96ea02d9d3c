"""The disk feature cache: Z_v computed once per (tower, layer, image bytes), verified, and what training reads."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from minillava.data.dataset import compute_features
from minillava.data.feature_cache import FeatureCache


@pytest.fixture()
def images(scene_dir, tmp_path):
    """A private copy of 6 scene images (tests edit them)."""
    root = tmp_path / "images"
    root.mkdir()
    names = sorted(p.name for p in (scene_dir / "images").glob("train_*.png"))[:6]
    for n in names:
        shutil.copy(scene_dir / "images" / n, root / n)
    return root, names


@pytest.fixture(scope="module")
def processor(backbone_dirs):
    from minillava.model.backbones import load_vision
    return load_vision(str(backbone_dirs[0]))[1]


class Counting:
    """compute(names) through the tower, remembering which names it was asked for."""

    def __init__(self, model, root, processor):
        self.model, self.root, self.processor, self.calls = model, root, processor, []

    def __call__(self, names):
        self.calls.append(list(names))
        return compute_features(self.model, self.root, names, self.processor, progress=False)


def _cache(tmp_path, model, processor, dtype="bf16", log=print):
    return FeatureCache.for_model(tmp_path / "cache", model, processor, name="test-tower", dtype=dtype, log=log)


def test_miss_then_hit_equals_online_to_bf16(random_model, processor, images, tmp_path):
    root, names = images
    online = compute_features(random_model, root, names, processor, progress=False)
    cache, compute = _cache(tmp_path, random_model, processor), Counting(random_model, root, processor)
    first = cache.get(root, names, compute)
    assert (cache.hits, cache.misses) == (0, 6) and compute.calls == [names]
    again = _cache(tmp_path, random_model, processor).get(root, names, compute)
    assert len(compute.calls) == 1  # the second time nothing is computed
    assert first.dtype == torch.float32 and first.shape == online.shape
    assert torch.equal(first, again) and torch.equal(first, online.bfloat16().float())
    torch.testing.assert_close(first, online, atol=0.02, rtol=1e-2)


def test_fp32_cache_is_exact(random_model, processor, images, tmp_path):
    root, names = images
    online = compute_features(random_model, root, names, processor, progress=False)
    cache = _cache(tmp_path, random_model, processor, dtype="fp32")
    cache.get(root, names, Counting(random_model, root, processor))
    assert torch.equal(_cache(tmp_path, random_model, processor, dtype="fp32").get(root, names, None), online)


def test_another_layer_is_another_cache(random_model, processor, images, tmp_path):
    from minillava.model import MiniLlava

    root, names = images
    penultimate = _cache(tmp_path, random_model, processor)
    penultimate.get(root, names, Counting(random_model, root, processor))
    last = MiniLlava(random_model.vision, random_model.lm, random_model.tokenizer, select_layer=-1)
    cache, compute = _cache(tmp_path, last, processor), Counting(last, root, processor)
    assert cache.dir != penultimate.dir and cache.key["select_layer"] == -1
    got = cache.get(root, names, compute)
    assert cache.misses == 6 and torch.equal(got, compute_features(last, root, names, processor, progress=False)
                                             .bfloat16().float())


def test_changed_image_is_recomputed_alone(random_model, processor, images, tmp_path):
    from PIL import Image

    root, names = images
    _cache(tmp_path, random_model, processor).get(root, names, Counting(random_model, root, processor))
    Image.new("RGB", (96, 96), (200, 30, 30)).save(root / names[2])  # same name, new content
    cache, compute = _cache(tmp_path, random_model, processor), Counting(random_model, root, processor)
    got = cache.get(root, names, compute)
    assert compute.calls == [[names[2]]] and (cache.hits, cache.misses) == (5, 1)
    assert torch.equal(got, compute_features(random_model, root, names, processor, progress=False).bfloat16().float())


def test_corrupt_shard_is_reported_and_rebuilt(random_model, processor, images, tmp_path):
    root, names = images
    expected = _cache(tmp_path, random_model, processor).get(root, names, Counting(random_model, root, processor))
    cache_dir = _cache(tmp_path, random_model, processor).dir
    (shard,) = cache_dir.glob("shard-*.safetensors")
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated, e.g. by a crash outside our atomic writes
    messages = []
    cache = _cache(tmp_path, random_model, processor, log=messages.append)
    compute = Counting(random_model, root, processor)
    assert torch.equal(cache.get(root, names, compute), expected)
    assert len(messages) == 1 and "corrupt" in messages[0] and shard.name in messages[0]
    assert "\n" not in messages[0] and compute.calls == [names]
    (rebuilt,) = cache_dir.glob("shard-*.safetensors")
    assert rebuilt != shard and len(load_file(str(rebuilt))) == 6
    assert not list(cache_dir.glob(".*.tmp"))  # atomic writes leave no temporaries behind


def test_training_reads_the_disk_cache_and_matches_online(tiny_cfg, tmp_path, monkeypatch, capsys):
    """fp32 cache: bit-identical training; bf16 cache: the same to bf16 precision; a warm cache runs no tower."""
    import minillava.data.dataset as dataset_module
    from minillava.cli import main
    from minillava.train import run_stage

    def weights(out):
        return load_file(str(out / "model.safetensors"))

    base = dict(stage1_steps=3, eval_every=0)
    run_stage(tiny_cfg(**base), 1, tmp_path / "online", progress=False)
    online = weights(tmp_path / "online")
    fp32 = dict(base, feature_cache_dir=str(tmp_path / "fp32"), feature_cache_dtype="fp32")
    run_stage(tiny_cfg(**fp32), 1, tmp_path / "cold", progress=False)  # computes and stores
    calls = []
    monkeypatch.setattr(dataset_module, "compute_features", lambda *a, **k: calls.append(a) or 1 / 0)
    run_stage(tiny_cfg(**fp32), 1, tmp_path / "warm", progress=False)  # reads only: the tower never runs
    assert calls == []
    monkeypatch.undo()
    for run in ("cold", "warm"):
        assert all(torch.equal(online[k], v) for k, v in weights(tmp_path / run).items())

    cfg = tiny_cfg(**dict(base, feature_cache_dir=str(tmp_path / "bf16")))
    assert main(["cache-features", "--data", cfg.data_dir, "--split", "train", "--out", str(tmp_path / "bf16"),
                 f"vision_name={cfg.vision_name}", f"lm_name={cfg.lm_name}"]) == 0
    assert "0 images already cached" in capsys.readouterr().out
    run_stage(cfg, 1, tmp_path / "bf16run", progress=True)
    assert ", 0 computed" in capsys.readouterr().out  # the CLI's cache is the one training finds
    bf16 = weights(tmp_path / "bf16run")
    for k, v in bf16.items():  # bf16-rounded inputs: each of the 3 Adam steps (≤ lr per weight) may differ a little
        diff = (v - online[k]).abs()
        assert float(diff.max()) <= 2 * 3 * cfg.stage1_lr and float(diff.mean()) < 1e-4, k
