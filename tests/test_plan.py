"""`minillava plan`: its memory figure against torch's measured peak, and its advice, without any download."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from minillava.cli import main
from minillava.config import load_config
from minillava.data.prompts import DETAIL_PROMPTS
from minillava.model.known import write_lm_standin, write_vision_standin
from minillava.plan import backbone_configs, fake_models, make_plan, stage_plan


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    vision = write_vision_standin(root / "clip", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=2, projection_dim=32)
    lm = write_lm_standin(root / "smol", "HuggingFaceTB/SmolLM2-135M-Instruct", list(DETAIL_PROMPTS) * 3,
                          hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2)
    return vision, lm


def measured_peak(model, optimizer, batch: dict) -> int:
    """Bytes of weights + AdamW state before the step, plus the highest live total of torch's CPU allocations
    during one training step (second step: the AdamW moments already exist), read from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    def step():
        loss, n = model(**batch)
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations = []

    def walk(node):
        if type(node.extra_fields).__name__ == "_ExtraFields_Allocation":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)
    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    assert allocations, "torch.profiler recorded no allocations"
    live = peak = 0
    for _, size in sorted(allocations):
        live += size
        peak = max(peak, live)
    before = sum(p.numel() * p.element_size() for p in model.parameters())
    before += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    return before + peak


@pytest.mark.parametrize("stage,batch,seq_len,checkpointing", [(1, 8, 300, False), (2, 4, 250, False),
                                                               (2, 8, 300, True)])
def test_plan_peak_memory_is_within_25_percent_of_the_measured_cpu_peak(standins, stage, batch, seq_len,
                                                                        checkpointing):
    from minillava.model.build import build_model
    from minillava.model.freeze import set_trainable
    from minillava.train import enable_checkpointing, make_optimizer

    vision, lm = standins
    cfg = load_config("small", [f"vision_name={vision}", f"lm_name={lm}", "device=cpu", f"stage{stage}_batch={batch}",
                                f"gradient_checkpointing={checkpointing}"])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    optimizer = make_optimizer(set_trainable(model, stage), 1e-4, 0.0, "cpu")
    model.lm.train(stage == 2)
    if checkpointing:  # as train_stage does it
        enable_checkpointing(model.lm)
    answer = 20
    ids = torch.randint(0, 400, (batch, seq_len))
    ids[:, :model.num_image_tokens] = model.image_token_id  # 196 image tokens first, as tokenize_conversation puts them
    labels = torch.full_like(ids, -100)
    labels[:, -answer:] = ids[:, -answer:]
    features = torch.randn(batch, model.num_image_tokens, model.vision.config.hidden_size)
    measured = measured_peak(model, optimizer, dict(input_ids=ids, labels=labels, image_features=features))

    vision_config, lm_config, _ = backbone_configs(cfg)
    planned = stage_plan(cfg, stage, fake_models(cfg, vision_config, lm_config), seq_len=seq_len, answer_tokens=answer)
    estimate = planned["memory"]["peak"]
    print(f"stage {stage} batch {batch} × {seq_len} tokens{' checkpointed' if checkpointing else ''}: measured {measured / 2**20:.1f} MiB, "
          f"plan {estimate / 2**20:.1f} MiB ({estimate / measured - 1:+.0%})")
    assert abs(estimate / measured - 1) <= 0.25
    assert planned["params"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_plan_small_runs_offline_and_reports_every_card():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", "--preset", "small", "--json"]) == 0
    plan = json.loads(out.getvalue())
    assert "built-in copy" in plan["configs"] and plan["bf16"]
    s1, s2 = plan["stages"]
    assert s1["image_tokens"] == 196 and s1["params"]["trainable"] == s1["params"]["projector W"]
    assert 130e6 < s2["params"]["LM"] < 140e6 and s2["params"]["trainable"] > s2["params"]["LM"]  # SmolLM2-135M
    assert set(s2["fits"]) == {"16", "24", "40", "80"} and s2["flops_per_step"] > s1["flops_per_step"]


def test_plan_names_a_fix_where_a_stage_does_not_fit():
    plan = make_plan(load_config("small", ["stage2_batch=64"]))  # 64 × 452 tokens of activations: > 24 GB
    s2 = plan["stages"][1]
    assert not s2["fits"][16] and s2["fits"][80]
    assert plan["fixes"][2][16] == "gradient_checkpointing=true"  # the first change that fits, in cost order
    checkpointed = stage_plan(load_config("small", ["stage2_batch=64", "gradient_checkpointing=true"]), 2,
                              fake_models(load_config("small"), *backbone_configs(load_config("small"))[:2]))
    assert checkpointed["memory"]["activations"] < s2["memory"]["activations"] / 5


def test_plan_reads_a_local_directory(standins):
    vision, lm = standins
    plan = make_plan(load_config("small", [f"vision_name={vision}", f"lm_name={lm}"]))
    assert f"{lm}: config.json" in plan["configs"] and plan["stages"][1]["params"]["LM"] < 10e6  # 4 narrow layers, not 135M
