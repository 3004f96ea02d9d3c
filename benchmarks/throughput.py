"""Training-step throughput: our MiniLlava loop vs transformers' LlavaForConditionalGeneration (issue 7, item 4).

One run measures, for the same weights and the same random batch of realistic shape:

    stage2_ours_cached   forward + backward + AdamW, W and f_φ train, Z_v given (feature cache)
    stage2_ours_online   the same, Z_v computed by the frozen tower every step
    stage2_hf            LlavaForConditionalGeneration from ``to_hf_llava`` in a plain loop: ``labels=`` → its own
                         loss over full (B, T, V) logits, pixels online, vision frozen with requires_grad_(False)
    stage1_ours_cached   only W trains (f_φ frozen but back-propagated through), Z_v given
    stage1_ours_online   the same with the tower online

and, on the tiny preset only (``extras`` in the JSON):

    stage2_ours_padded   stage 2 on the *real* tiny stage-2 length distribution (rule-teacher samples of fresh
                         scenes), length-grouped batches right-padded as the trainer makes them
    stage2_ours_packed   the same batches packed into rows of ≤ max_length (``pack_sequences=true``)
    stage1_disk_cache    stage 1 with Z_v read from the disk feature cache (``feature_cache_dir``), plus the
                         feature-preparation times: tower online vs cache cold (compute + write) vs warm (read)
    stage2_ours_compiled stage2_ours_cached with the LM decoder under ``torch.compile`` (``compile=true``)

and reports ms/step (median after warm-up), samples/s, tokens/s, peak memory, and on a GPU MFU against the card's
stated dense bf16 peak (``benchmarks/gpu.py``'s table; an unknown card gets none). On CPU there is no MFU: a matmul
rate measured during the run moves with the machine's load (it gave "MFU" above 100% on a shared machine), so it is
recorded as ``peak`` for reference only. Nothing here asserts a time.

    python benchmarks/throughput.py --device cpu --steps 30          # tiny preset, shipped backbones
    python benchmarks/throughput.py --device cuda --steps 20         # tiny + the GPU shape matrix (random weights)
    python benchmarks/throughput.py --device cpu --gpu-shapes-smoke  # the GPU-shape code path, scaled down, on CPU
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers

transformers.utils.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("stage2_ours_cached", "stage2_ours_online", "stage2_hf", "stage1_ours_cached", "stage1_ours_online")
TEXT_LEN = 141        # text tokens per sample; + image tokens = sequence length (tiny: 141 + 9 = 150)
ANSWER_LEN = 25       # labelled answer tokens at the end of each sample
IMAGE_START = 35      # GPU shapes: <image> run after a vicuna-like system prompt (tiny: found from prompt_ids)

# --- real architectures' shapes, written by hand (no downloads) ----------------------------------------------
VISION_SHAPES = {
    "clip-vit-b16-224": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                             patch_size=16, image_size=224),
    "clip-vit-l14-224": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                             patch_size=14, image_size=224),
    "clip-vit-l14-336": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                             patch_size=14, image_size=336),
}
LM_SHAPES = {
    "smollm2-135m": ("llama", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   intermediate_size=1536, vocab_size=49152)),
    "smollm2-360m": ("llama", dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                                   intermediate_size=2560, vocab_size=49152)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                   intermediate_size=4864, vocab_size=151936)),
}
SMOKE_SCALE = dict(layers=2, width_div=8, vocab=1024)  # --gpu-shapes-smoke: same code path, small on CPU


def scaled(values: dict, smoke: bool) -> dict:
    if not smoke:
        return dict(values)
    v = dict(values)
    v["num_hidden_layers"] = SMOKE_SCALE["layers"]
    v["hidden_size"] //= SMOKE_SCALE["width_div"]          # keeps every head count valid (head_dim / 8)
    v["intermediate_size"] //= SMOKE_SCALE["width_div"]
    if "vocab_size" in v:
        v["vocab_size"] = SMOKE_SCALE["vocab"]
    return v


class _StubTokenizer:
    """What MiniLlava and to_hf_llava need of a tokenizer when the LM is random: the special ids."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, image_token_id: int):
        self.image_token_id = image_token_id

    def convert_tokens_to_ids(self, token):
        return self.image_token_id


def build_shape_model(vision_name: str, lm_name: str, smoke: bool, device: str):
    """A MiniLlava with random weights of the named shapes (fp32 master weights, built on ``device``)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, \
        Qwen2ForCausalLM

    from minillava.model import MiniLlava

    kind, lm_values = LM_SHAPES[lm_name]
    lm_values = scaled(lm_values, smoke)
    vocab = lm_values["vocab_size"]
    common = dict(max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
    lm_cfg = (LlamaConfig if kind == "llama" else Qwen2Config)(**lm_values, **common)
    vis_cfg = CLIPVisionConfig(**scaled(VISION_SHAPES[vision_name], smoke))
    for cfg in (lm_cfg, vis_cfg):
        cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        vision = CLIPVisionModel(vis_cfg).eval().requires_grad_(False)
        lm = (LlamaForCausalLM if kind == "llama" else Qwen2ForCausalLM)(lm_cfg)
        model = MiniLlava(vision, lm, _StubTokenizer(vocab - 1))  # the last id plays <image>
    return model.to(device)


def build_tiny_model(device: str):
    from minillava.config import load_config
    from minillava.model.build import build_model

    model, _ = build_model(load_config("tiny"))
    return model.to(device)


def tiny_image_start(model) -> int:
    """Where prompt_ids puts the image run for ``<image>\\n question`` under the stage-2 template."""
    from minillava.conversation import IMAGE_TOKEN, get_template, prompt_ids

    ids = prompt_ids(IMAGE_TOKEN + "\nWhat shapes are in the picture?", model.tokenizer, get_template("vicuna_v1"),
                     image_tokens=model.num_image_tokens)
    return int((ids == model.image_token_id).nonzero()[0])


def make_batch(model, batch: int, image_start: int, device: str, seed: int = 0) -> dict:
    """Random ids of realistic shape: BOS, text, N image tokens at ``image_start``, text, ANSWER_LEN labels."""
    g = torch.Generator().manual_seed(seed)
    n_img, vocab = model.num_image_tokens, model.lm.get_input_embeddings().weight.shape[0]
    seq = TEXT_LEN + n_img
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    ids[ids == model.image_token_id] = 5
    ids[:, 0] = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else 5
    ids[:, image_start:image_start + n_img] = model.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -ANSWER_LEN:] = ids[:, -ANSWER_LEN:]
    vc = model.vision.config
    pixels = torch.randn(batch, 3, vc.image_size, vc.image_size, generator=g)
    return {"input_ids": ids.to(device), "labels": labels.to(device),
            "attention_mask": torch.ones_like(ids).to(device), "pixel_values": pixels.to(device)}


# --- FLOPs and peak -------------------------------------------------------------------------------------------

def _numel(module, skip=()) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not any(s in n for s in skip))


def model_flops_per_step(model, stage: int, online: bool, batch: int) -> float:
    """6·N per token for what trains, 4·N for the frozen LM (stage 1: back-propagated, not updated), 2·N_vision
    per vision-sequence token when the tower runs. N_LM excludes the embedding table and head; the head counts
    only at the ANSWER_LEN labelled positions. Attention-score FLOPs are left out (small at these lengths)."""
    n_lm = _numel(model.lm.get_decoder(), skip=("embed_tokens",))
    d, v = model.lm.config.hidden_size, model.lm.get_input_embeddings().weight.shape[0]
    n_img, seq = model.num_image_tokens, TEXT_LEN + model.num_image_tokens
    lm_mult = 6 if stage == 2 else 4
    flops = lm_mult * n_lm * seq + lm_mult * d * v * ANSWER_LEN + 6 * _numel(model.projector) * n_img
    if online:
        vc = model.vision.config
        flops += 2 * _numel(model.vision) * ((vc.image_size // vc.patch_size) ** 2 + 1)
    return float(flops * batch)


def measure_peak_flops(device: str, seconds: float = 1.0) -> dict:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    n = 8192 if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(4):
            a @ b
        reps += 4
        sync()
    elapsed = time.perf_counter() - t0
    return {"flops_per_s": 2 * n ** 3 * reps / elapsed, "dtype": str(dtype).replace("torch.", ""), "n": n}


# --- one variant ----------------------------------------------------------------------------------------------

def run_variant(spec: dict) -> dict:
    """Build the model for ``spec``, train ``steps`` + ``warmup`` steps of one variant, return its numbers."""
    device, variant, batch = spec["device"], spec["variant"], spec["batch"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if variant in ("stage2_ours_padded", "stage2_ours_packed"):
        return run_real_length_variant(spec)
    cuda = device.startswith("cuda")
    if spec["shape"] == "tiny":
        model = build_tiny_model(device)
        image_start = tiny_image_start(model)
    else:
        vision_name, lm_name = spec["shape"].split("+")
        model = build_shape_model(vision_name, lm_name, spec.get("smoke", False), device)
        image_start = IMAGE_START
    data = make_batch(model, batch, image_start, device)
    n_img = model.num_image_tokens
    stage = 2 if variant.startswith("stage2") else 1
    online = variant in ("stage2_ours_online", "stage2_hf", "stage1_ours_online")

    model.vision.requires_grad_(False)
    model.lm.requires_grad_(stage == 2)
    model.projector.requires_grad_(True)
    if variant == "stage2_hf":
        from minillava.model.export import to_hf_llava
        with torch.device(device):
            net, _ = to_hf_llava(model)
        del model.lm, model.projector  # only the exported copy trains; free the original's memory
        net = net.to(device).train()
        net.model.vision_tower.requires_grad_(False)
        flops_model = None
    else:
        net = model.train()
        net.vision.eval()
        flops_model = model
    params = [p for p in net.parameters() if p.requires_grad]
    from minillava.train import make_optimizer
    opt = make_optimizer(params, lr=1e-5, weight_decay=0.0, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    features = model.image_features(data["pixel_values"]) if not online else None  # the cache, in memory
    extra = {}
    if variant == "stage1_disk_cache":  # Z_v of real scene images, read from a warm disk cache
        features, extra = disk_cache_features(model, spec)
    if variant == "stage2_ours_compiled":
        from minillava.train import compile_decoder
        compile_decoder(model.lm.get_decoder())

    def step():
        with autocast:
            if variant == "stage2_hf":
                loss = net(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                           pixel_values=data["pixel_values"], labels=data["labels"]).loss
            else:
                kw = {"image_features": features} if not online else {"pixel_values": data["pixel_values"]}
                loss_sum, n = net(data["input_ids"], data["labels"], data["attention_mask"], **kw)
                loss = loss_sum / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
        elif i == 0:
            extra["first_step_s"] = time.perf_counter() - t0  # includes compilation for the compiled variant
    loss = float(loss.detach())
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"{spec['shape']} {variant}: non-finite loss {loss}")
    med = statistics.median(times)
    seq = data["input_ids"].shape[1]
    out = {"ms_per_step": med * 1e3, "samples_per_s": batch / med, "tokens_per_s": batch * seq / med,
           "seq_len": seq, "image_tokens": n_img,
           "trainable_params": sum(p.numel() for p in params), "final_loss": loss, **extra}
    if cuda:
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        out["peak_mem_kind"] = "cuda_max_memory_allocated"
    else:
        out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        out["peak_mem_kind"] = "ru_maxrss (own process)" if spec.get("isolated") else "ru_maxrss (shared process)"
    if flops_model is not None:
        out["model_flops_per_step"] = model_flops_per_step(flops_model, stage, online, batch)
    else:  # the same model and the same useful work as ours online: HF's wasted full-vocab logits are not credited
        out["model_flops_per_step"] = spec["hf_flops"]
    return out


# --- extras (tiny preset): real lengths padded vs packed, disk feature cache, torch.compile --------------------

MAX_LENGTH = 384      # the tiny preset's max_length: the packing row capacity


def real_stage2_dataset(model, n_samples: int, seed: int = 0):
    """The tiny stage-2 data as the trainer sees it: rule-teacher samples of fresh scenes, vicuna_v1, max_length."""
    from minillava.conversation import get_template
    from minillava.data.dataset import InstructDataset
    from minillava.data.shapes import generate_split
    from minillava.data.teachers import generate_rule_instructions

    records = [scene[0] for scene in generate_split(max(4, n_samples // 3 + 1), "train", seed)]
    return InstructDataset(generate_rule_instructions(records, seed=seed), model.tokenizer, get_template("vicuna_v1"),
                           image_tokens=model.num_image_tokens, max_length=MAX_LENGTH)


def padding_stats(ds, batch: int, group_by_length: int = 16) -> dict:
    """Pad tokens per batch over one epoch: plain shuffling vs length-grouped, each right-padded vs packed."""
    from minillava.data.dataset import pack_rows, padding_tokens

    lengths = [len(x["input_ids"]) for x in ds.items]
    n = max(1, len(ds) // batch)
    out = {"samples": len(ds), "batches": n, "mean_len": sum(lengths) / len(lengths), "min_len": min(lengths),
           "max_len": max(lengths)}
    for name, group in (("shuffled", 0), ("grouped", group_by_length)):
        padded = packed = real = rows = 0
        for step in range(n):
            idx = ds.batch_indices(step, batch, 0, group)
            packing = [[idx[j] for j in row] for row in pack_rows([lengths[i] for i in idx], MAX_LENGTH)]
            padded += padding_tokens(lengths, [[i] for i in idx])
            packed += padding_tokens(lengths, packing)
            real += sum(lengths[i] for i in idx)
            rows += len(packing)
        out[name] = {"padded_pad_tokens_per_batch": padded / n, "packed_pad_tokens_per_batch": packed / n,
                     "real_tokens_per_batch": real / n, "padded_pad_fraction": padded / (padded + real),
                     "packed_pad_fraction": packed / (packed + real), "packed_rows_per_batch": rows / n}
    return out


def run_real_length_variant(spec: dict) -> dict:
    """stage2_ours_padded / _packed: W + LM train on consecutive length-grouped batches of the real data."""
    from minillava.train import make_optimizer

    device, batch, packed = spec["device"], spec["batch"], spec["variant"] == "stage2_ours_packed"
    model = build_tiny_model(device)
    total = spec["warmup"] + spec["steps"]
    ds = real_stage2_dataset(model, batch * total)
    g = torch.Generator().manual_seed(0)
    ds.attach_features(torch.randn(len(ds.images), model.num_image_tokens, model.vision.config.hidden_size,
                                   generator=g))                     # (images, N, Dv): the cache, in memory
    batches = [ds.batch_indices(i, batch, 0, 16) for i in range(total)]
    model.vision.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr=1e-5, weight_decay=0.0, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    model.train()
    times, computed, real = [], 0, 0
    for i, idx in enumerate(batches):
        data = ds.collate_packed(idx, MAX_LENGTH) if packed else ds.collate(idx)
        data = {k: v.to(device) for k, v in data.items()}
        t0 = time.perf_counter()
        with autocast:
            loss_sum, n = model(**data)
            loss = loss_sum / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i == 0:
            first = time.perf_counter() - t0
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
            computed += data["input_ids"].numel()
            real += sum(len(ds.items[j]["input_ids"]) for j in idx)
    seconds = sum(times)  # batches differ in length: rates from totals, not from the median step
    out = {"ms_per_step": 1e3 * statistics.median(times), "samples_per_s": batch * len(times) / seconds,
           "tokens_per_s": real / seconds, "real_tokens_per_step": real / len(times),
           "computed_tokens_per_step": computed / len(times), "pad_fraction": 1 - real / computed,
           "final_loss": float(loss.detach()), "trainable_params": sum(p.numel() for p in params),
           "first_step_s": first}
    out["peak_mem_mb"] = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def scene_images(root: Path, n: int, seed: int = 1) -> list[str]:
    """``n`` embedded scenes written as PNGs under ``root`` (what a stage-1 run reads)."""
    from minillava.data.shapes import generate_split

    root.mkdir(parents=True, exist_ok=True)
    scenes = generate_split(n, "train", seed)
    for record, _, image in scenes:
        image.save(root / record.file_name, compress_level=1)
    return [record.file_name for record, _, _ in scenes]


def tiny_processor():
    from minillava.model.backbones import load_vision
    return load_vision("tiny")[1]


def disk_cache_features(model, spec: dict) -> tuple[torch.Tensor, dict]:
    """Z_v (batch, N, Dv) of the batch's images from the warm cache the parent filled; the tower must not run."""
    from minillava.data.feature_cache import FeatureCache

    def no_tower(names):
        raise RuntimeError(f"stage1_disk_cache: {len(names)} images missing from the warm cache")
    t0 = time.perf_counter()
    cache = FeatureCache.for_model(spec["cache_dir"], model, tiny_processor(), name="tiny")
    features = cache.get(spec["image_dir"], spec["names"][:spec["batch"]], no_tower).to(spec["device"])
    return features, {"cache_read_s": time.perf_counter() - t0, "cache_hits": cache.hits}


def feature_prep(device: str, n_images: int, workdir: Path, log=print) -> dict:
    """Seconds to get Z_v for ``n_images`` scene PNGs: tower online, cache cold (compute + write), cache warm."""
    from minillava.data.dataset import compute_features
    from minillava.data.feature_cache import FeatureCache

    model, processor = build_tiny_model(device), tiny_processor()
    names = scene_images(workdir / "images", n_images)

    def compute(todo):
        return compute_features(model, workdir / "images", todo, processor, device=device, progress=False)
    out = {"images": n_images}
    t0 = time.perf_counter()
    online = compute(names)
    out["online_s"] = time.perf_counter() - t0
    for run in ("cold", "warm"):
        t0 = time.perf_counter()
        cached = FeatureCache.for_model(workdir / "cache", model, processor, name="tiny").get(
            workdir / "images", names, compute)
        out[f"{run}_s"] = time.perf_counter() - t0
    out["max_abs_diff_vs_online"] = float((cached - online).abs().max())  # bf16 storage
    out["bytes_on_disk"] = sum(p.stat().st_size for p in (workdir / "cache").rglob("shard-*"))
    out["warm_over_online"] = out["online_s"] / out["warm_s"]
    log(f"  feature prep, {n_images} images: online {out['online_s']:.2f} s, cache cold {out['cold_s']:.2f} s, "
        f"warm {out['warm_s']:.2f} s")
    return {**out, "names": names, "image_dir": str(workdir / "images"), "cache_dir": str(workdir / "cache")}


def bench_extras(*, device: str, batch: int, steps: int, warmup: int, isolate: bool, compile_: bool,
                 standard: dict, log=print) -> dict:
    """The tiny-preset extras; ``standard`` holds the same run's stage1_ours_online / stage2_ours_cached."""
    import tempfile

    spec = dict(shape="tiny", device=device, batch=batch, steps=steps, warmup=warmup, threads=torch.get_num_threads())
    run = run_isolated if isolate else run_variant
    results, errors = {}, {}
    model = build_tiny_model("cpu")
    padding = padding_stats(real_stage2_dataset(model, min(1200, max(240, 64 * batch))), batch)
    del model
    with tempfile.TemporaryDirectory() as tmp:
        prep = feature_prep(device, max(batch, 64), Path(tmp), log=log)
        names = {k: prep.pop(k) for k in ("names", "image_dir", "cache_dir")}
        todo = ["stage2_ours_padded", "stage2_ours_packed", "stage1_disk_cache"]
        todo += ["stage2_ours_compiled"] if compile_ else []
        for variant in todo:
            try:
                results[variant] = run({**spec, **names, "variant": variant})
            except Exception as err:  # noqa: BLE001 — e.g. torch.compile without a working C++ toolchain
                errors[variant] = " ".join(str(err).split())[:400]
                log(f"  tiny {variant:20s} failed: {errors[variant]}")
                continue
            r = results[variant]
            log(f"  tiny {variant:29s} {r['ms_per_step']:9.1f} ms/step {r['samples_per_s']:9.2f} samples/s")
    sps = {k: v["samples_per_s"] for k, v in results.items()}
    ratios = {}
    if "stage2_ours_packed" in sps and "stage2_ours_padded" in sps:
        ratios["stage2_packed_over_padded"] = sps["stage2_ours_packed"] / sps["stage2_ours_padded"]
    if "stage1_disk_cache" in sps:
        ratios["stage1_disk_cache_over_online"] = sps["stage1_disk_cache"] / standard["stage1_ours_online"]["samples_per_s"]
    if "stage2_ours_compiled" in sps:
        ratios["stage2_compiled_over_eager"] = sps["stage2_ours_compiled"] / standard["stage2_ours_cached"]["samples_per_s"]
    ratios["feature_prep_warm_cache_over_online"] = prep["warm_over_online"]
    return {"results": results, "errors": errors, "ratios": ratios, "padding": padding, "feature_prep": prep,
            "compile_requested": compile_}


def extras_table(extras: dict) -> str:
    lines = ["| variant | ms/step | samples/s | real tokens/s | first step s | pad fraction |",
             "|---|---:|---:|---:|---:|---:|"]
    for variant, r in extras["results"].items():
        pad = f"{100 * r['pad_fraction']:.1f}%" if "pad_fraction" in r else "0%"
        lines.append(f"| {variant} | {r['ms_per_step']:.1f} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r.get('first_step_s', float('nan')):.1f} | {pad} |")
    for variant, err in extras["errors"].items():
        lines.append(f"| {variant} | failed: {err[:120]} | | | | |")
    lines += ["", "| ratio | measured |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f}× |" for k, v in extras["ratios"].items()]
    p = extras["padding"]
    lines += ["", f"Padding on the tiny stage-2 data ({p['samples']} samples, {p['min_len']}–{p['max_len']} tokens, "
              f"mean {p['mean_len']:.0f}; batches of {extras.get('batch', '?')}):", "",
              "| batches | padded: pad tokens / batch | packed: pad tokens / batch | packed rows / batch |",
              "|---|---:|---:|---:|"]
    for name in ("shuffled", "grouped"):
        q = p[name]
        lines.append(f"| {name} | {q['padded_pad_tokens_per_batch']:.0f} ({100 * q['padded_pad_fraction']:.1f}%) | "
                     f"{q['packed_pad_tokens_per_batch']:.0f} ({100 * q['packed_pad_fraction']:.1f}%) | "
                     f"{q['packed_rows_per_batch']:.1f} |")
    return "\n".join(lines)


def _child(spec, queue):
    try:
        queue.put(("ok", run_variant(spec)))
    except BaseException as err:  # noqa: BLE001 — report it to the parent
        queue.put(("error", repr(err)))


def run_isolated(spec: dict) -> dict:
    """run_variant in a fresh spawned process, so ru_maxrss is this variant's own peak."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=({**spec, "isolated": True}, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{spec['shape']} {spec['variant']}: {value}")
    return value


def bench_shape(shape: str, *, device: str, batch: int, steps: int, warmup: int, peak: float | None,
                isolate: bool, smoke: bool = False, log=print) -> dict:
    results = {}
    flops_hf = None
    for variant in VARIANTS:
        spec = dict(shape=shape, variant=variant, device=device, batch=batch, steps=steps, warmup=warmup,
                    smoke=smoke, threads=torch.get_num_threads())
        if variant == "stage2_hf":
            spec["hf_flops"] = flops_hf
        r = run_isolated(spec) if isolate else run_variant(spec)
        if variant == "stage2_ours_online":
            flops_hf = r["model_flops_per_step"]
        r["mfu"] = r["model_flops_per_step"] / (r["ms_per_step"] / 1e3) / peak if peak else None
        results[variant] = r
        log(f"  {shape:34s} {variant:20s} {r['ms_per_step']:9.1f} ms/step {r['samples_per_s']:9.2f} samples/s")
    sps = {k: v["samples_per_s"] for k, v in results.items()}
    ratios = {"stage2_ours_cached_over_hf": sps["stage2_ours_cached"] / sps["stage2_hf"],
              "stage2_ours_online_over_hf": sps["stage2_ours_online"] / sps["stage2_hf"],
              "stage1_cached_over_online": sps["stage1_ours_cached"] / sps["stage1_ours_online"],
              "stage2_cached_over_online": sps["stage2_ours_cached"] / sps["stage2_ours_online"]}
    return {"shape": shape, "results": results, "ratios": ratios}


def gpu_shape_names(only: str | None = None) -> list[str]:
    names = [f"{v}+{l}" for v in VISION_SHAPES for l in LM_SHAPES]
    return [n for n in names if not only or any(o in n for o in only.split(","))]


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    info["cpu_count"] = os.cpu_count()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table(report: dict) -> str:
    lines = ["| shape | variant | ms/step | samples/s | tokens/s | peak mem MB | MFU |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for run in report["runs"]:
        for variant, r in run["results"].items():
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "–"
            lines.append(f"| {run['shape']} | {variant} | {r['ms_per_step']:.1f} | {r['samples_per_s']:.1f} | "
                         f"{r['tokens_per_s']:.0f} | {r['peak_mem_mb']:.0f} | {mfu} |")
    lines += ["", "| shape | ours-cached / hf | ours-online / hf | stage-1 cached / online | stage-2 cached / online |",
              "|---|---:|---:|---:|---:|"]
    for run in report["runs"]:
        q = run["ratios"]
        lines.append(f"| {run['shape']} | {q['stage2_ours_cached_over_hf']:.2f}× | {q['stage2_ours_online_over_hf']:.2f}× "
                     f"| {q['stage1_cached_over_online']:.2f}× | {q['stage2_cached_over_online']:.2f}× |")
    return "\n".join(lines)


def run_benchmark(device: str = "cpu", steps: int = 30, batch: int | None = None, warmup: int = 3,
                  gpu_shapes: bool | None = None, smoke: bool = False, only: str | None = None,
                  gpu_batch: int | None = None, isolate: bool | None = None, tiny: bool = True,
                  peak_seconds: float = 1.0, extras: bool = True, compile_: bool = True, log=print) -> dict:
    import transformers
    cuda = device.startswith("cuda")
    batch = batch or 32
    isolate = (not cuda) if isolate is None else isolate
    gpu_shapes = cuda if gpu_shapes is None else gpu_shapes
    peak = measure_peak_flops(device, peak_seconds)
    log(f"measured {peak['dtype']} matmul rate on {device}: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s (not an MFU peak)")
    from gpu import peak_flops  # the card's stated peak, which does not move with load; None on CPU
    stated_peak = peak_flops(device)
    report = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), "batch": batch, "steps": steps, "warmup": warmup,
              "text_len": TEXT_LEN, "answer_len": ANSWER_LEN, "autocast": "bf16" if cuda else None,
              "isolated_processes": isolate, "machine": machine(), "peak": peak, "runs": []}
    if tiny:
        report["runs"].append(bench_shape("tiny", device=device, batch=batch, steps=steps, warmup=warmup,
                                          peak=stated_peak, isolate=isolate, log=log))
        if extras:
            report["extras"] = {"batch": batch, **bench_extras(
                device=device, batch=batch, steps=steps, warmup=warmup, isolate=isolate, compile_=compile_,
                standard=report["runs"][-1]["results"], log=log)}
    if gpu_shapes or smoke:
        report["gpu_shapes"] = {"smoke": smoke, "scale": SMOKE_SCALE if smoke else None,
                                "batch": gpu_batch or (2 if smoke else 8)}
        for name in gpu_shape_names(only):
            report["runs"].append(bench_shape(name, device=device, batch=report["gpu_shapes"]["batch"], steps=steps,
                                              warmup=warmup, peak=stated_peak, isolate=isolate, smoke=smoke,
                                              log=log))
            if cuda:
                torch.cuda.empty_cache()
    return report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32, help="tiny-preset batch (the tiny stage-2 batch)")
    ap.add_argument("--gpu-batch", type=int, default=None, help="batch for the GPU shapes (8; smoke 2)")
    ap.add_argument("--gpu-shapes-smoke", action="store_true",
                    help="run the GPU-shape matrix scaled down (2 layers, widths / 8, vocab 1024) on this device")
    ap.add_argument("--no-gpu-shapes", action="store_true", help="on cuda, only the tiny preset")
    ap.add_argument("--only", default=None, help="comma-separated substrings selecting GPU shapes")
    ap.add_argument("--no-isolate", action="store_true", help="CPU: run variants in this process (RSS is shared)")
    ap.add_argument("--no-extras", action="store_true", help="skip padded-vs-packed, disk cache and compile")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (slow to start)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<device>_tiny.json)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    report = run_benchmark(args.device, steps=args.steps, batch=args.batch, warmup=args.warmup,
                           gpu_shapes=(args.device == "cuda" and not args.no_gpu_shapes),
                           smoke=args.gpu_shapes_smoke, only=args.only, gpu_batch=args.gpu_batch,
                           isolate=False if args.no_isolate else None, extras=not args.no_extras,
                           compile_=not args.no_compile)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{args.device}_tiny.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    tables = table(report) + ("\n\n" + extras_table(report["extras"]) if "extras" in report else "")
    out.with_suffix(".md").write_text(f"`{' '.join(['python benchmarks/throughput.py', *(argv or sys.argv[1:])])}`"
                                      f" — {report['machine'].get('cpu', '')}, torch {report['torch']}\n\n"
                                      + tables + "\n")
    print()
    print(tables)
    print(f"\nwrote {out} and {out.with_suffix('.md').name}")
    return report


if __name__ == "__main__":
    main()
