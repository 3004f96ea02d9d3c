"""Training speed options that must not change what is learned: padding-free packing, torch.compile's guard."""

import json

import pytest
import torch

from minillava.conversation import get_template
from minillava.data.dataset import InstructDataset, pack_rows, padding_tokens
from minillava.data.llava_json import read_llava_json


@pytest.fixture(scope="module")
def dataset(scene_dir, random_model):
    ds = InstructDataset(read_llava_json(scene_dir / "instruct_train.json"), random_model.tokenizer,
                         get_template("vicuna_v1"), image_tokens=random_model.num_image_tokens, max_length=384)
    g = torch.Generator().manual_seed(0)
    ds.attach_features(torch.randn(len(ds.images), random_model.num_image_tokens,
                                   random_model.vision.config.hidden_size, generator=g))
    return ds


def test_pack_rows_places_every_sample_once_within_capacity():
    lengths = [120, 300, 50, 200, 80, 384, 10]
    rows = pack_rows(lengths, 384)
    assert sorted(j for row in rows for j in row) == list(range(len(lengths)))
    assert all(sum(lengths[j] for j in row) <= 384 for row in rows)
    assert len(rows) == 3 and rows == pack_rows(lengths, 384)  # 1144 tokens: the minimum, 3 rows; deterministic


def test_packed_rows_restart_positions_and_keep_image_order(dataset, random_model):
    indices = dataset.batch_indices(0, 8, seed=0)
    batch = dataset.collate_packed(indices, 384)
    ids, pos, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    assert "attention_mask" not in batch and ids.shape == pos.shape == labels.shape
    assert ids.shape[0] < len(indices) and ids.shape[1] <= 384
    starts = int((pos == 0).sum())  # one start per sample, plus one per padded tail
    assert len(indices) <= starts <= len(indices) + ids.shape[0]
    assert bool((labels[pos == 0] == -100).all())  # no sample predicts the next one's first token
    assert int((ids == random_model.image_token_id).sum()) == batch["image_features"].shape[0] * 9


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss, n = model(**batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), n, grads


def test_packed_loss_and_gradients_equal_padded(dataset, random_model):
    """The same samples, padded or packed: the same loss sum, token count and gradients (attention is confined)."""
    model = random_model.train()
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(True)
    indices = dataset.batch_indices(0, 8, seed=0)
    padded = _loss_and_grads(model, dataset.collate(indices))
    packed = _loss_and_grads(model, dataset.collate_packed(indices, 384))
    model.eval()
    assert padded[1] == packed[1] > 0
    torch.testing.assert_close(packed[0], padded[0], atol=1e-4, rtol=1e-5)
    assert padded[2].keys() == packed[2].keys() and len(padded[2]) > 10
    for k in padded[2]:
        torch.testing.assert_close(packed[2][k], padded[2][k], atol=1e-5, rtol=1e-4, msg=k)


def test_packing_saves_padding_when_several_samples_fit_a_row(dataset):
    """Rows of 1024 (the small preset's max_length) against shuffled batches of these 173–264-token samples.

    With rows of 384 only one such sample fits and packing pads more; on the tiny data, length-grouped batches
    already pad little (benchmarks/README.md)."""
    lengths = [len(x["input_ids"]) for x in dataset.items]
    padded = packed = 0
    for step in range(len(dataset) // 8):
        idx = dataset.batch_indices(step, 8, seed=0, group_by_length=0)
        padded += padding_tokens(lengths, [[i] for i in idx])
        packed += padding_tokens(lengths, [[idx[j] for j in row] for row in pack_rows([lengths[i] for i in idx], 1024)])
    assert packed < padded


def test_training_with_packing_follows_the_padded_run(tiny_cfg, tmp_path):
    from minillava.train import run_stage

    curves = {}
    for pack in (False, True):
        cfg = tiny_cfg(stage2_steps=3, pack_sequences=pack, eval_every=0)
        run_stage(cfg, 2, tmp_path / str(pack), progress=False)
        curves[pack] = [json.loads(line)["loss"] for line in (tmp_path / str(pack) / "log.jsonl").read_text().splitlines()]
    assert len(curves[True]) == 3
    assert curves[True][0] == pytest.approx(curves[False][0], abs=1e-4)  # same weights, same batch
    assert curves[True] == pytest.approx(curves[False], rel=1e-3)


def test_compile_failure_is_one_clear_error(tiny_cfg, tmp_path, monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    from minillava.train import run_stage

    def broken(fn, *args, **kwargs):
        def call(*a, **k):
            raise TorchDynamoException("C++ compiler not found\nlong inductor traceback")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(RuntimeError, match=r"compile=true: torch.compile failed .*C\+\+ compiler not found.*"
                                           r"train with compile=false"):
        run_stage(tiny_cfg(compile=True, eval_every=0), 1, tmp_path / "c", progress=False)


def test_shared_prefix_is_the_system_prompt_and_stops_before_the_image(dataset, random_model):
    """The rows' common start is BOS + Vicuna's system prompt + "USER:"; the image tokens differ per row."""
    from minillava.conversation import VICUNA_SYSTEM
    from minillava.data.dataset import shared_prefix_length

    batch = dataset.collate(dataset.batch_indices(0, 8, seed=0), share_prefix=True)
    prefix = batch["shared_prefix"]
    ids = batch["input_ids"]
    assert bool((ids[:, :prefix] == ids[:1, :prefix]).all()) and ids[0, prefix] == random_model.image_token_id
    assert VICUNA_SYSTEM in random_model.tokenizer.decode(ids[0, :prefix])
    assert "shared_prefix" not in dataset.collate(dataset.batch_indices(0, 8, seed=0))  # only when asked
    # a labelled token inside the common start shortens it: position P must carry no loss either
    labels = batch["labels"].clone()
    labels[:, 5] = ids[:, 5]
    assert shared_prefix_length(ids, labels, random_model.image_token_id) == 4


def test_shared_prefix_loss_and_gradients_equal_the_plain_batch(dataset, random_model):
    """Running the common prefix once and repeating its keys and values: the same loss sum, count and gradients
    (fp32, atol 1e-5) as the plain batch, prefix embeddings and projector included."""
    model = random_model.train()
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(True)
    batch = dataset.collate(dataset.batch_indices(1, 8, seed=0), share_prefix=True)
    assert batch["shared_prefix"] > 50
    shared = _loss_and_grads(model, batch)
    plain = _loss_and_grads(model, {k: v for k, v in batch.items() if k != "shared_prefix"})
    model.eval()
    assert shared[1] == plain[1] > 0
    torch.testing.assert_close(shared[0] / shared[1], plain[0] / plain[1], atol=1e-5, rtol=0)  # eq. 3's mean
    assert shared[2].keys() == plain[2].keys() and len(plain[2]) > 10
    for k in plain[2]:
        torch.testing.assert_close(shared[2][k], plain[2][k], atol=1e-5, rtol=1e-4, msg=k)


def test_shared_prefix_refuses_a_prefix_that_carries_loss(dataset, random_model):
    batch = dataset.collate(dataset.batch_indices(0, 4, seed=0), share_prefix=True)
    batch["labels"][:, 3] = batch["input_ids"][:, 3]
    with pytest.raises(ValueError, match="shared_prefix=.*no loss"):
        random_model(**batch)
