"""`minillava plan`: parameters, tokens, FLOPs and peak memory of each stage (§4.2) before anyone rents a GPU.

Nothing is downloaded and no weight is allocated. The backbones' configs come from a local directory (read with
``AutoConfig``), the Hugging Face cache, or ``model/known.py``'s copies of the configs the presets name; the models
are then built under ``FakeTensorMode`` (tensors with shapes and dtypes but no storage), which gives exact parameter
counts. Activation memory is *counted*, not guessed: one forward of the stage's micro-batch runs on fake tensors
while ``saved_tensors_hooks`` add up every tensor autograd keeps for the backward pass (parameters excluded).

    peak ≈ weights (fp32: 4 B × all params, the frozen tower included) + AdamW moments (8 B × trainable)
         [+ bf16 copies of trained weights] + max(activations saved for backward + one layer's backward working
         set, 2 × gradients (4 B × trainable) at the optimiser step)

The working set (2 × one layer's saved activations) and the peak's form were fitted to torch's measured peak on
CPU stand-ins (tests/test_plan.py: within 25%); on a GPU, with bf16, they are an estimate.

FLOPs per step: 2·P·T forward per sample over the LM body, 4·L·T²·D attention, the head only at the answer
positions (``MiniLlava.forward``); the backward costs 2× the forward where weights train, 1× where only the input
gradient flows back (stage 1 and LoRA pass through the frozen LM to reach W).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

GIB = 2 ** 30
CARDS_GB = (16, 24, 40, 80)  # what a "24 GB" card holds is 24 GiB (RTX 4090: 24,564 MiB)
CONTEXT_GIB = 1.0  # CUDA context, allocator slack and cuBLAS workspaces: kept free on every card
# dense bf16 tensor-core peaks (TFLOP/s) of cards with these memories, for a time estimate at an assumed MFU
CARD_TFLOPS = {"24 GB (L4 / A10G class, ~120 TFLOP/s)": 120.0, "80 GB (A100, 312 TFLOP/s)": 312.0,
               "80 GB (H100 SXM, 989 TFLOP/s)": 989.0}
ASSUMED_MFU = 0.30
TEXT_TOKENS = {1: 24, 2: 256}   # mean text tokens per sample: a COCO caption + template; a LLaVA-Instruct dialogue
ANSWER_SHARE = {1: 0.8, 2: 0.5}  # of those, the tokens that carry loss


def plan_bf16(cfg) -> bool:
    """bf16 autocast is the trainer's on CUDA only; ``device=auto`` is planned as a GPU run."""
    return cfg.bf16 and cfg.device != "cpu"


def backbone_configs(cfg) -> tuple[object, object, str]:
    """(vision config, LM config, where they came from) for ``cfg.vision_name`` / ``cfg.lm_name``."""
    from transformers import AutoConfig, CLIPVisionConfig

    from .model.backbones import backbone_path
    from .model.known import KNOWN, known_config

    sources = []

    def load(name: str, part: str):
        path = backbone_path(name, part) if name == "tiny" else name
        if Path(path).is_dir() or name not in KNOWN:
            try:
                config = CLIPVisionConfig.from_pretrained(path) if part == "vision" else AutoConfig.from_pretrained(path)
                sources.append(f"{name}: config.json")
                return config
            except OSError:
                if name not in KNOWN:
                    raise ValueError(f"plan: no config for {name!r} (not a local directory, not in the Hugging Face "
                                     f"cache, not one of the known {', '.join(KNOWN)}); pass a local directory "
                                     f"holding its config.json") from None
        sources.append(f"{name}: built-in copy of its config")
        return known_config(name)
    return load(cfg.vision_name, "vision"), load(cfg.lm_name, "lm"), "; ".join(sources)


def fake_models(cfg, vision_config, lm_config, dtype=torch.float32):
    """The tower, the LM and W, built on fake tensors (shapes only)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    from .model.projector import build_projector

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        vision = CLIPVisionModel(vision_config)
        lm = AutoModelForCausalLM.from_config(lm_config, dtype=dtype)
        projector = build_projector(cfg.projector, vision_config.hidden_size, lm_config.hidden_size)
    return mode, vision, lm, projector


def lora_params(lm, cfg) -> int:
    """r·(d_in + d_out) for each targeted linear layer (peft's A and B)."""
    targets = {t.strip() for t in cfg.lora_targets.split(",")}
    return sum(cfg.lora_r * (m.in_features + m.out_features) for n, m in lm.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets)


def count_activations(mode, lm, projector, batch: int, seq_len: int, image_tokens: int, answer_tokens: int,
                      train_lm: bool, vision_width: int) -> int:
    """Bytes autograd saves for backward in one forward of (batch, seq_len), counted on fake tensors.

    Mirrors ``MiniLlava.forward`` with cached features: H_v = W·Z_v spliced before the text embeddings, the LM
    decoder, the head only at the ``answer_tokens`` positions of each row, fp32 cross-entropy.
    """
    params = {id(p) for p in (*lm.parameters(), *projector.parameters())}
    saved: dict[int, int] = {}
    keep = []  # hold the tensors so their ids are not reused

    def pack(t):
        base = t._base if t._base is not None else t
        if id(base) not in params:
            saved[id(base)] = base.numel() * base.element_size()
            keep.append(base)
        return t
    lm.requires_grad_(train_lm)
    projector.requires_grad_(True)
    dtype = next(lm.parameters()).dtype
    with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = torch.empty(batch, image_tokens, vision_width)                       # (B, N, Dv) cached Z_v
        h_v = projector(z).to(dtype)                                            # (B, N, D)
        ids = torch.zeros(batch, max(seq_len - image_tokens, 1), dtype=torch.long)
        embeds = torch.cat([h_v, lm.get_input_embeddings()(ids)], dim=1)       # (B, T, D)
        hidden = lm.get_decoder()(inputs_embeds=embeds, use_cache=False).last_hidden_state
        picked = hidden[:, :answer_tokens].reshape(-1, hidden.shape[-1])      # (M, D)
        logits = lm.get_output_embeddings()(picked)                           # (M, V)
        torch.nn.functional.cross_entropy(logits.float(), torch.zeros(len(picked), dtype=torch.long), reduction="sum")
    return sum(saved.values())


def stage_plan(cfg, stage: int, models, seq_len: int | None = None, answer_tokens: int | None = None,
               text_tokens: int | None = None) -> dict:
    """Parameters, tokens, FLOPs and peak memory (bytes) of one training step of ``stage`` under ``cfg``.

    ``seq_len`` (image + text tokens per sample) defaults to N + ``text_tokens`` (default ``TEXT_TOKENS``)."""
    mode, vision, lm, projector = models
    n_image = (vision.config.image_size // vision.config.patch_size) ** 2 + (1 if cfg.vision_keep_cls else 0)
    micro = max(1, cfg.stage(stage).batch // cfg.grad_accum)
    seq_len = seq_len or min(n_image + (text_tokens or TEXT_TOKENS[stage]), cfg.max_length)
    answer_tokens = answer_tokens or max(1, int(ANSWER_SHARE[stage] * (seq_len - n_image)))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731 (tied weights count once)
    p_vision, p_lm, p_proj = count(vision), count(lm), count(projector)
    embed = lm.get_input_embeddings().weight.numel()
    head = 0 if lm.get_output_embeddings().weight is lm.get_input_embeddings().weight else embed
    p_body = p_lm - embed - head
    lora = stage == 2 and cfg.lora_r > 0
    train_lm = stage == 2 and not lora
    trainable = p_proj + (p_lm if train_lm else lora_params(lm, cfg) if lora else 0)
    bf16 = plan_bf16(cfg)
    act = count_activations(mode, lm, projector, micro, seq_len, n_image, answer_tokens, train_lm or lora,
                            vision.config.hidden_size)
    if bf16:
        act = int(act * 0.55)  # autocast: matmul outputs in bf16, norms and softmax statistics in fp32 (estimate)
    layers = lm.config.num_hidden_layers
    working = 2 * act // layers  # backward of one layer: its gradients beside all that is still saved (measured)
    if cfg.gradient_checkpointing and stage == 2:  # keep each layer's input; one layer re-run at a time
        per_layer_input = micro * seq_len * lm.config.hidden_size * (2 if bf16 else 4)
        act = int(act / layers + layers * per_layer_input)
    memory = {"weights": 4 * (p_vision + p_lm + p_proj), "gradients": 4 * trainable, "adamw": 8 * trainable,
              "activations": act, "backward_working_set": working,
              "bf16_weight_copies": 2 * (p_lm if train_lm else 0) * bf16}
    # with set_to_none the gradients grow as the activations are freed: the peak is the start of the backward
    # (everything saved + one layer's working set) or the optimiser step (gradients + AdamW's temporaries)
    memory["peak"] = memory["weights"] + memory["adamw"] + memory["bf16_weight_copies"] + max(
        act + working, 2 * memory["gradients"])
    d, layers = lm.config.hidden_size, lm.config.num_hidden_layers
    forward = micro * (2 * p_body * seq_len + 4 * layers * seq_len ** 2 * d + 2 * embed * answer_tokens
                       + 2 * p_proj * n_image)
    backward = forward * 2 if train_lm else forward  # weight gradients only where weights train
    flops = (forward + backward) * cfg.grad_accum
    return {"stage": stage, "params": {"vision (frozen)": p_vision, "projector W": p_proj, "LM": p_lm,
                                       "trainable": trainable, "frozen": p_vision + p_lm + p_proj - trainable},
            "tokens_per_sample": seq_len, "image_tokens": n_image, "answer_tokens_per_sample": answer_tokens,
            "micro_batch": micro, "flops_per_step": flops, "steps": cfg.stage(stage).steps,
            "memory": memory, "fits": {gb: memory["peak"] / GIB + CONTEXT_GIB <= gb for gb in CARDS_GB},
            "feature_pass_flops_per_image": 2 * p_vision * (n_image + 1)}


def make_plan(cfg, text_tokens: dict[int, int] | None = None) -> dict:
    """The plan of both stages, and for every card a stage does not fit, the changes that make it fit.

    ``text_tokens``: mean text tokens per sample for stage 1 and 2 (default ``TEXT_TOKENS``)."""
    from .config import ConfigError

    vision_config, lm_config, source = backbone_configs(cfg)
    models = fake_models(cfg, vision_config, lm_config)
    text_tokens = {**TEXT_TOKENS, **(text_tokens or {})}
    stages = [stage_plan(cfg, s, models, text_tokens=text_tokens[s]) for s in (1, 2)]
    fixes = {}
    for plan in stages:
        s = plan["stage"]
        levers = [("bf16=true", dict(bf16=True, device="cuda"))] if not plan_bf16(cfg) else []
        if s == 2:
            levers += [("gradient_checkpointing=true", dict(gradient_checkpointing=True)),
                       ("lora_r=64 lora_alpha=128 stage2_lr=2e-4", dict(lora_r=64, lora_alpha=128.0))]
        batch = cfg.stage(s).batch
        accum = [(f"grad_accum={k} (micro-batch {batch // k}, same stage{s}_batch)", dict(grad_accum=k))
                 for k in (2, 4, 8, 16, 32) if batch % k == 0]
        # one change at a time first (cheapest first), then the levers together, then with a smaller micro-batch
        candidates = [[one] for one in levers + accum] + [levers[:i] for i in range(2, len(levers) + 1)] + \
            [levers[:i] + [a] for i in range(1, len(levers) + 1) for a in accum]
        peaks: dict[str, int] = {}
        for gb in CARDS_GB:
            if plan["fits"][gb]:
                continue
            fixes.setdefault(s, {})[gb] = "none of bf16, checkpointing, LoRA, a smaller micro-batch: a bigger card"
            for combo in candidates:
                label = " ".join(name for name, _ in combo)
                if label not in peaks:
                    try:
                        changed = dataclasses.replace(cfg, **{k: v for _, c in combo for k, v in c.items()}).validate()
                    except ConfigError:
                        continue
                    peaks[label] = stage_plan(changed, s, models, text_tokens=text_tokens[s])["memory"]["peak"]
                if peaks[label] / GIB + CONTEXT_GIB <= gb:
                    fixes[s][gb] = label
                    break
    return {"preset": cfg.preset, "vision": cfg.vision_name, "lm": cfg.lm_name, "configs": source,
            "bf16": plan_bf16(cfg), "text_tokens": text_tokens, "stages": stages, "fixes": fixes}


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def format_plan(plan: dict) -> str:
    lines = [f"plan for preset {plan['preset']}: {plan['vision']} + {plan['lm']} "
             f"({'bf16 autocast' if plan['bf16'] else 'fp32'}; configs: {plan['configs']})"]
    for s in plan["stages"]:
        p, m = s["params"], s["memory"]
        lines += [f"\nstage {s['stage']} ({s['steps']} steps, micro-batch {s['micro_batch']}):",
                  "  params: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in p.items()),
                  f"  tokens/sample: {s['tokens_per_sample']} ({s['image_tokens']} image + text; "
                  f"{s['answer_tokens_per_sample']} carry loss)",
                  f"  FLOPs/step: {s['flops_per_step']:.3g}; features once per image: "
                  f"{s['feature_pass_flops_per_image']:.3g}",
                  "  memory: " + ", ".join(f"{k} {_gib(v)}" for k, v in m.items() if k != "peak" and v),
                  f"  peak ≈ {_gib(m['peak'])} (+{CONTEXT_GIB:.0f} GiB CUDA context)",
                  "  fits: " + ", ".join(f"{gb} GB {'yes' if ok else 'no'}" for gb, ok in s["fits"].items())]
        for card, tflops in CARD_TFLOPS.items():
            minutes = s["flops_per_step"] * s["steps"] / (tflops * 1e12 * ASSUMED_MFU) / 60
            lines.append(f"  time on {card} at {ASSUMED_MFU:.0%} MFU: {minutes:.1f} min")
        for gb, fix in plan["fixes"].get(s["stage"], {}).items():
            lines.append(f"  to fit {gb} GB: {fix}")
    lines.append(f"\n(text tokens per sample assumed: stage 1 {plan['text_tokens'][1]}, stage 2 {plan['text_tokens'][2]} "
                 f"(--text-tokens); activations "
                 f"counted on fake tensors at that length; with bf16 they are an estimate (0.55 × fp32))")
    return "\n".join(lines)
