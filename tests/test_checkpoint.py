"""Trained weights on disk (checkpoint.py): the format stays, tied weights are written once, saving never changes
the model being saved."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from minillava import checkpoint


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_weights_round_trip_with_a_tied_head_written_once(random_model, tmp_path):
    from conftest import make_random_model

    path = checkpoint.save_weights(tmp_path / "model.safetensors", random_model)
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert meta == {"projector": json.dumps("mlp2x_gelu"), "select_layer": "-2"}
    assert any(k.startswith("projector.") for k in keys) and "lm.model.embed_tokens.weight" in keys
    if random_model.lm_is_tied():
        assert "lm.lm_head.weight" not in keys
    fresh = make_random_model(seed=1)
    checkpoint.load_weights(fresh, path)
    for k, v in random_model.state_dict().items():
        if not k.startswith("vision."):  # g is never written: it is loaded by name
            assert torch.equal(v, fresh.state_dict()[k]), k


def test_saving_leaves_the_model_untouched(random_model, tmp_path):
    before = _state(random_model)
    checkpoint.save_weights(tmp_path / "model.safetensors", random_model, include_lm=True)
    after = random_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())


def test_stage1_weights_hold_only_the_projector(random_model):
    assert all(k.startswith("projector.") for k in checkpoint.model_weights(random_model, include_lm=False))
