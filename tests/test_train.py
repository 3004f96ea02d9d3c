"""§4.2 training loop: freeze policy, loss goes down, exact resume, fault handling."""

import json

import pytest
import torch
from safetensors.torch import load_file

from minillava.checkpoint import latest_good
from minillava.model.build import build_model, load_model
from minillava.train import NonFiniteLoss, run_stage


def test_stage1_trains_only_the_projector(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    model, processor = build_model(cfg)
    lm_before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    vision_before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    proj_before = {k: v.clone() for k, v in model.projector.state_dict().items()}
    run_stage(cfg, 1, tmp_path / "s1", model=model, processor=processor)
    assert all(torch.equal(v, model.lm.state_dict()[k]) for k, v in lm_before.items())
    assert all(torch.equal(v, model.vision.state_dict()[k]) for k, v in vision_before.items())
    assert not all(torch.equal(v, model.projector.state_dict()[k]) for k, v in proj_before.items())
    saved = load_file(str(tmp_path / "s1" / "model.safetensors"))
    assert saved and all(k.startswith("projector.") for k in saved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_both_stages_run_on_cuda_from_a_model_built_on_the_cpu(tiny_cfg, tmp_path):
    # the quickstart's path: build on the CPU, compute Z_v once, then train on the GPU with bf16 autocast
    # (Z_v used to be computed with the pixels on the GPU and the tower still on the CPU — found on an H100)
    cfg = tiny_cfg(device="cuda")
    model, s1 = run_stage(cfg, 1, tmp_path / "s1")
    model, s2 = run_stage(cfg, 2, tmp_path / "s2", model=model, processor=s1["processor"], features=s1["features"])
    assert next(model.parameters()).is_cuda and torch.isfinite(torch.tensor(s2["last_loss"]))


def test_stage2_trains_projector_and_lm_and_loss_falls(tiny_cfg, tmp_path):
    cfg = tiny_cfg(stage2_steps=30, stage2_lr=3e-3, log_every=1, save_every=100)
    model, summary = run_stage(cfg, 2, tmp_path / "s2")
    assert summary["last_loss"] < 0.8 * summary["first_loss"]
    saved = load_file(str(tmp_path / "s2" / "model.safetensors"))
    assert any(k.startswith("lm.") for k in saved) and any(k.startswith("projector.") for k in saved)
    log = [json.loads(line) for line in (tmp_path / "s2" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 30 and log[-1]["samples_per_s"] > 0
    reloaded, _, _ = load_model(tmp_path / "s2")
    for k, v in model.lm.state_dict().items():
        assert torch.equal(v, reloaded.lm.state_dict()[k])


def test_the_log_holds_the_first_step_every_nth_and_the_last(tiny_cfg, tmp_path):
    """The first step's loss (before any update) is where the loss curves begin; then every log_every-th step."""
    run_stage(tiny_cfg(stage2_steps=6, log_every=4, eval_every=0, save_every=100), 2, tmp_path / "s2")
    log = [json.loads(line) for line in (tmp_path / "s2" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 4, 6]


def _final_weights(out):
    return load_file(str(out / "model.safetensors"))


def test_resume_is_bit_identical(tiny_cfg, tmp_path):
    """Stop after a checkpoint, start a fresh process-equivalent (new model), resume: same weights as straight."""
    cfg = tiny_cfg(stage2_steps=7, save_every=3, grad_accum=2, stage2_batch=8)
    run_stage(cfg, 2, tmp_path / "straight")
    _run_until(cfg, tmp_path / "resumed", stop_after=3)  # killed right after the step-3 checkpoint
    run_stage(cfg, 2, tmp_path / "resumed", resume=True)  # a fresh model, restored from disk
    a, b = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _run_until(cfg, out, stop_after):
    """Run stage 2 but raise right after the optimiser step ``stop_after`` has been checkpointed."""
    import minillava.checkpoint as checkpoint

    original = checkpoint.save

    def save_then_die(out_dir, step, *args, **kwargs):
        path = original(out_dir, step, *args, **kwargs)
        if step >= stop_after:
            raise KeyboardInterrupt
        return path
    checkpoint.save = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            run_stage(cfg, 2, out)
    finally:
        checkpoint.save = original


def test_corrupt_checkpoint_falls_back_to_previous(tiny_cfg, tmp_path):
    cfg = tiny_cfg(stage2_steps=6, save_every=2, keep_checkpoints=3)
    run_stage(cfg, 2, tmp_path / "run")
    newest = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
    weights = newest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    messages = []
    path, state = latest_good(tmp_path / "run", log=messages.append)
    assert path.name == "step_0000004" and state["step"] == 4
    assert "truncated or corrupt" in messages[0] and "step_0000006" in messages[0]


def test_nan_loss_stops_with_the_step(tiny_cfg, tmp_path):
    cfg = tiny_cfg(stage2_steps=4)
    model, processor = build_model(cfg)
    with torch.no_grad():
        model.projector[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="step 0"):
        run_stage(cfg, 2, tmp_path / "nan", model=model, processor=processor)


def test_data_order_is_a_function_of_seed_and_step(scene_dir, random_model):
    """Resume and DDP rely on it: the same (seed, step) always gives the same batch; an epoch covers everything."""
    from minillava.conversation import get_template
    from minillava.data.dataset import InstructDataset
    from minillava.data.llava_json import read_llava_json

    ds = InstructDataset(read_llava_json(scene_dir / "instruct_train.json"), random_model.tokenizer,
                         get_template("vicuna_v1"), image_tokens=9, max_length=384)
    for group in (0, 4):
        a = [ds.batch_indices(s, 6, seed=3, group_by_length=group) for s in range(8)]
        b = [ds.batch_indices(s, 6, seed=3, group_by_length=group) for s in range(8)]
        assert a == b and a != [ds.batch_indices(s, 6, seed=4, group_by_length=group) for s in range(8)]
        first_epoch = [i for s in range(len(ds) // 6) for i in ds.batch_indices(s, 6, seed=3, group_by_length=0)]
        assert sorted(first_epoch) == list(range(len(first_epoch)))
    grouped = [ds.batch_indices(s, 6, seed=3, group_by_length=4) for s in range(4)]
    assert sorted(i for b in grouped for i in b) == sorted(ds._stream(0, 24, 3))  # a mega-batch is a permutation
    spread = lambda b: max(len(ds.items[i]["input_ids"]) for i in b) - min(len(ds.items[i]["input_ids"]) for i in b)  # noqa: E731
    plain = [ds.batch_indices(s, 6, seed=3) for s in range(4)]
    assert sum(map(spread, grouped)) < sum(map(spread, plain))  # similar lengths share a batch
