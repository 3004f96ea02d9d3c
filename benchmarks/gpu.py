"""The `small` path's stages 1 and 2 at real shapes, random weights, on one GPU — beside `minillava plan` (issue 20).

Real checkpoints and COCO cannot be downloaded on this project's machines, so this measures what can be measured
without them: the trainer (`train.run_stage`, exactly as `minillava train` runs it) on random-weight stand-ins with
the published geometry of the preset's backbones (`model/known.py`), on embedded scenes drawn at the tower's
resolution. For each shape and stage it prints samples/s, tokens/s, MFU and peak memory next to `plan`'s estimate:

    ViT-B/16 (224 px, 196 tokens)      + SmolLM2-135M  (the small preset)
    ViT-L/14-336 (336 px, 576 tokens)  + Qwen2.5-0.5B  (the override the README names)

    python benchmarks/gpu.py                  # on one GPU (planned for ~8 min; not yet run); results to benchmarks/results/
    python benchmarks/gpu.py --dry-run        # CPU, shrunk stand-ins, 2 steps: the check before spending GPU time

Random weights change no shape, FLOP or byte, so throughput and memory are those of the real checkpoints; losses
mean nothing. Timing starts after the first logged interval (CUDA start-up, allocator warm-up).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "clip-vit-b16-224+smollm2-135m": ("openai/clip-vit-base-patch16", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "clip-vit-l14-336+qwen2.5-0.5b": ("openai/clip-vit-large-patch14-336", "Qwen/Qwen2.5-0.5B-Instruct"),
}
DRY_SHRINK = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
DRY_LM_SHRINK = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1024)
# dense bf16 tensor-core peaks, for MFU (None: unknown card, MFU not reported)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}


def peak_flops(device: str) -> float | None:
    import torch
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((t * 1e12 for key, t in PEAK_TFLOPS.items() if key in name), None)


def rate(log_path: Path, stage: int, batch: int) -> dict:
    """Samples/s and tokens/s between the first and the last log record (the first interval is warm-up)."""
    records = [r for r in map(json.loads, log_path.read_text().splitlines()) if r["stage"] == stage]
    first, last = records[0], records[-1]
    t = lambda r: r["step"] * batch / r["samples_per_s"]  # noqa: E731 (seconds since the stage started)
    if len(records) < 2 or t(last) <= t(first):
        return {"samples_per_s": last["samples_per_s"], "tokens_per_s": last["tokens_per_s"], "timed_steps": last["step"]}
    seconds = t(last) - t(first)
    tokens = last["tokens_per_s"] * t(last) - first["tokens_per_s"] * t(first)
    return {"samples_per_s": round((last["step"] - first["step"]) * batch / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "timed_steps": last["step"] - first["step"]}


def run_shape(name: str, work: Path, args) -> dict:
    import torch

    from minillava.config import load_config
    from minillava.data.llava_json import write_llava_json
    from minillava.data.prompts import DETAIL_PROMPTS
    from minillava.data.records import load_split
    from minillava.data.shapes import write_shapes_dataset
    from minillava.data.teachers import generate_rule_instructions
    from minillava.model.known import KNOWN, write_lm_standin, write_vision_standin
    from minillava.plan import fake_models, stage_plan
    from minillava.train import run_stage

    vision_name, lm_name = SHAPES[name]
    image_size = KNOWN[vision_name]["image_size"]
    texts = [*DETAIL_PROMPTS, "How many shapes are there? There are two shapes. The red circle is at the top left."] * 4
    t0 = time.perf_counter()
    vision_dir = write_vision_standin(work / name / "vision", vision_name, **(DRY_SHRINK if args.dry_run else {}))
    lm_dir = write_lm_standin(work / name / "lm", lm_name, texts, **(DRY_LM_SHRINK if args.dry_run else {}))
    data_dir = work / name / "data"
    write_shapes_dataset(data_dir, args.images, seed=0, size_px=image_size)
    setup_s = time.perf_counter() - t0
    overrides = [f"vision_name={vision_dir}", f"lm_name={lm_dir}", "data_source=shapes", f"data_dir={data_dir}",
                 "data_split=train", f"image_size={image_size}", f"stage1_steps={args.steps}",
                 f"stage2_steps={args.steps}", f"log_every={max(1, args.steps // 5)}", "eval_every=0",
                 f"save_every={args.steps}", f"device={args.device}"]
    if args.dry_run:
        overrides += ["stage1_batch=4", "stage2_batch=4"]
    result = {"shape": name, "vision": vision_name, "lm": lm_name, "setup_s": round(setup_s, 1), "stages": {}}
    model = features = None
    for stage in (1, 2):
        extra = [f"init_from={work / name / 'stage1'}"] if stage == 2 else []
        cfg = load_config("small", overrides + extra)
        if stage == 2:  # the rule teacher's instructions for the scenes (§3), as `minillava data instruct` writes them
            write_llava_json(data_dir / "instruct_train.json",
                             generate_rule_instructions(load_split(data_dir, "train"), seed=0))
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model, summary = run_stage(cfg, stage, work / name / f"stage{stage}", progress=False)
        seconds = time.perf_counter() - start
        features = summary["features"]
        measured = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
        batch = cfg.stage(stage).batch
        speed = rate(work / name / f"stage{stage}" / "log.jsonl", stage, batch)
        tokens_per_sample = speed["tokens_per_s"] / max(speed["samples_per_s"], 1e-9)
        plan = stage_plan(cfg, stage, fake_models(cfg, model.vision.config, model.lm.config),
                          seq_len=max(int(tokens_per_sample), model.num_image_tokens + 1))
        step_flops = plan["flops_per_step"]
        steps_per_s = speed["samples_per_s"] / batch
        peak = peak_flops(args.device)
        result["stages"][stage] = {
            **speed, "seconds": round(seconds, 1), "batch": batch, "tokens_per_sample": round(tokens_per_sample, 1),
            "last_loss": summary["last_loss"], "flops_per_step": step_flops,
            "mfu": round(step_flops * steps_per_s / peak, 4) if peak else None,
            "peak_memory_gib": round(measured / 2**30, 3) if measured is not None else None,
            "plan_peak_gib": round(plan["memory"]["peak"] / 2**30, 3)}
        del model
        model = None
    del features
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, shrunk stand-ins, 2 steps, 24 images")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_small_path.json")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per stage")
    parser.add_argument("--images", type=int, default=800, help="embedded scenes drawn at the tower's size")
    parser.add_argument("--only", default="", help="comma-separated shape names (default: all)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    import torch

    if args.dry_run:
        args.steps, args.images, args.device = 2, 24, args.device or "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.dry_run and not args.device.startswith("cuda"):
        parser.error("no CUDA GPU here: run with --dry-run (the CPU check) or on a GPU")
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SHAPES)
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "dry_run": args.dry_run, "torch": torch.__version__, "steps": args.steps, "runs": []}
    with tempfile.TemporaryDirectory(prefix="minillava-gpu-") as work:
        for name in names:
            report["runs"].append(run_shape(name, Path(work), args))
            for stage, r in report["runs"][-1]["stages"].items():
                print(f"{name} stage {stage}: {r['samples_per_s']} samples/s, {r['tokens_per_s']} tokens/s, "
                      f"MFU {r['mfu']}, peak {r['peak_memory_gib']} GiB (plan {r['plan_peak_gib']} GiB)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
