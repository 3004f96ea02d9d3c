"""Numerical faults stop the run with the step named and the last good checkpoint kept; a loss that is 0 because
nothing carries loss is an error, never a quiet no-op (§4.2 loss, eq. 3)."""

from __future__ import annotations

import pytest
import torch

from minillava.checkpoint import latest_good
from minillava.model.build import build_model
from minillava.train import NonFiniteLoss, run_stage, train_stage


class InfGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def poison_forward(model, call: int, how: str) -> None:
    """Make the model's ``call``-th forward (1-based) return a NaN loss, an inf-gradient loss, or exactly 0."""
    real, calls = model.forward, [0]

    def forward(*args, **kwargs):
        loss, n = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == call:
            loss = {"nan": lambda: loss * float("nan"), "inf_grad": lambda: InfGradient.apply(loss),
                    "zero": lambda: loss * 0.0}[how]()
        return loss, n
    model.forward = forward


@pytest.mark.parametrize("how, reason", [("nan", r"loss nan"), ("inf_grad", r"gradient norm (inf|nan)"),
                                         ("zero", r"loss is exactly 0")])
def test_fault_at_step_3_names_the_step_and_keeps_checkpoint_2(tiny_cfg, tmp_path, how, reason):
    cfg = tiny_cfg(stage2_steps=4, save_every=2, eval_every=0, stage2_batch=2, stage2_types="conv")
    model, processor = build_model(cfg)
    poison_forward(model, call=4, how=how)  # one forward per step: call 4 is step index 3
    with pytest.raises(NonFiniteLoss, match=rf"stage 2 step 3: .*{reason}") as info:
        run_stage(cfg, 2, tmp_path / "run", model=model, processor=processor, progress=False)
    assert "\n" not in str(info.value)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_0000002"]  # nothing written after the fault, the good one intact
    path, state = latest_good(tmp_path / "run")
    assert state["step"] == 2
    if how != "zero":
        assert "last good checkpoint" in str(info.value)
    # and the run resumes from it once the cause is gone
    _, summary = run_stage(cfg, 2, tmp_path / "run", resume=True, progress=False)
    assert summary["steps"] == 4 and len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 4


def test_a_batch_where_every_label_is_masked_is_an_error(tiny_cfg, tmp_path):
    from minillava.conversation import get_template
    from minillava.data.dataset import InstructDataset
    from minillava.data.llava_json import read_llava_json

    cfg = tiny_cfg(stage2_steps=2, eval_every=0, stage2_batch=2)
    model, _ = build_model(cfg)
    samples = read_llava_json(f"{cfg.data_dir}/instruct_train.json")[:8]
    dataset = InstructDataset(samples, model.tokenizer, get_template("vicuna_v1"), image_tokens=model.num_image_tokens,
                              max_length=cfg.max_length)
    for item in dataset.items:  # what the authors' code does on a tokenisation mismatch: mask everything
        item["labels"][:] = -100
    dataset.attach_features(torch.zeros(len(dataset.images), model.num_image_tokens, model.vision.config.hidden_size))
    with pytest.raises(NonFiniteLoss, match=r"stage 2 step 0: every label of the batch is masked"):
        train_stage(model, dataset, cfg, 2, tmp_path / "run", progress=False)
