"""Stage 2 with LoRA (model/lora.py): adapter + projector train, f_φ stays frozen, saved models are merged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft", reason="LoRA needs peft: pip install 'minillava[lora]'")

from minillava import checkpoint  # noqa: E402
from minillava.config import ConfigError  # noqa: E402
from minillava.model import lora  # noqa: E402
from minillava.model.build import build_model, load_model, save_model  # noqa: E402
from minillava.model.freeze import set_trainable  # noqa: E402
from minillava.train import run_stage  # noqa: E402

LORA = dict(lora_r=4, lora_alpha=8.0, lora_dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def _logits(model, seed: int = 0):
    """Logits (2, T, V) for a random prompt with N image tokens and random image features."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(5, 300, (2, 12), generator=g)
    image = torch.full((2, model.num_image_tokens), model.image_token_id)
    z = torch.randn(2, model.num_image_tokens, model.vision.config.hidden_size, generator=g)
    with torch.no_grad():
        return model.eval().logits(torch.cat([text[:, :3], image, text[:, 3:]], dim=1), image_features=z)


def _with_random_adapter(cfg):
    """A model with an adapter whose B is not zero (as after training), so merging has something to fold in."""
    model, _ = build_model(cfg)
    lora.apply_lora(model, cfg)
    torch.manual_seed(1)
    for name, p in model.lm.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return model


def test_only_adapter_and_projector_train(tiny_cfg):
    cfg = tiny_cfg(**LORA)
    model, _ = build_model(cfg)
    lora.apply_lora(model, cfg)
    names = {n for n, p in model.named_parameters() if p.requires_grad and p in set(set_trainable(model, 2))}
    assert names and all(n.startswith("projector.") or "lora_" in n for n in names)
    assert any(n.startswith("projector.") for n in names)
    layers = model.lm.config.num_hidden_layers
    # one A and one B per targeted linear per layer
    assert sum("lora_A" in n for n in names) == sum("lora_B" in n for n in names) == 4 * layers
    assert not any(p.requires_grad for p in model.vision.parameters())


def test_training_lowers_loss_and_saves_a_merged_model(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**LORA, stage2_steps=8, stage2_lr=3e-3, save_every=4, eval_every=0)
    model, processor = build_model(cfg)
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    run_stage(cfg, 2, tmp_path, model=model, processor=processor, progress=False)

    losses = [json.loads(x)["loss"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    # a checkpoint holds the adapter and the projector, not the frozen LM
    ckpt = load_file(str(sorted((tmp_path / "checkpoints").glob("step_*"))[-1] / "weights.safetensors"))
    assert all(k.startswith("projector.") or "lora_" in k for k in ckpt)
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in ckpt.items())  # B moved away from 0

    # the saved model is merged: plain transformers names, base weights untouched except W₀ + (α/r)·BA
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any("lora_" in k for k in saved)
    lm = {k[len("lm."):]: v for k, v in saved.items() if k.startswith("lm.")}
    assert set(lm) == set(before)
    scale = cfg.lora_alpha / cfg.lora_r
    for key, w0 in before.items():
        if "self_attn" in key and key.endswith("proj.weight"):
            prefix = "lm.base_model.model." + key[: -len(".weight")]
            delta = scale * ckpt[f"{prefix}.lora_B.default.weight"] @ ckpt[f"{prefix}.lora_A.default.weight"]
            torch.testing.assert_close(lm[key], w0 + delta, atol=1e-6, rtol=1e-5)
        else:
            assert torch.equal(lm[key], w0), f"frozen weight {key} changed"
    loaded, _, _ = load_model(tmp_path)
    assert not lora.has_lora(loaded.lm)  # loads without peft's wrapper


def test_merged_model_reproduces_unmerged_logits(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**LORA)
    model = _with_random_adapter(cfg)
    unmerged = _logits(model)
    assert (unmerged - _logits(lora.merge_lora(build_model(cfg)[0]))).abs().max() > 1e-3  # the adapter matters
    merged = lora.merged_copy(model)
    assert lora.has_lora(model.lm) and not lora.has_lora(merged.lm)
    torch.testing.assert_close(_logits(merged), unmerged, atol=1e-5, rtol=0)
    save_model(model, cfg, tmp_path)
    torch.testing.assert_close(_logits(load_model(tmp_path)[0]), unmerged, atol=1e-5, rtol=0)


def test_saving_never_mutates_the_live_model(tiny_cfg, tmp_path):
    """save_model merges the adapter into the file, not into the model that may go on training."""
    cfg = tiny_cfg(**LORA)
    model = _with_random_adapter(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = _logits(model)
    save_model(model, cfg, tmp_path)
    assert lora.has_lora(model.lm) and model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    torch.testing.assert_close(_logits(model), logits, atol=0, rtol=0)
    assert not any(lora.is_adapter_weight(k) for k in load_file(str(tmp_path / "model.safetensors")))


def test_checkpoint_state_round_trips_the_adapter(tiny_cfg):
    cfg = tiny_cfg(**LORA)
    model = _with_random_adapter(cfg)
    state = checkpoint.model_weights(model)
    fresh, _ = build_model(cfg)
    lora.apply_lora(fresh, cfg)
    checkpoint.set_model_weights(fresh, state)
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=0, rtol=0)
    del state[next(k for k in state if "lora_A" in k)]
    with pytest.raises(ValueError, match="adapter does not match"):
        checkpoint.set_model_weights(fresh, state)


def test_bad_lora_settings_fail_clearly(tiny_cfg):
    with pytest.raises(ConfigError, match="lora_4bit"):
        tiny_cfg(lora_4bit=True)
    with pytest.raises(ValueError, match="no linear layer named qkv"):
        cfg = tiny_cfg(lora_r=4, lora_targets="qkv")
        lora.apply_lora(build_model(cfg)[0], cfg)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            build_model(tiny_cfg(lora_r=4, lora_4bit=True))
