"""One GPU lease, many tiny-preset experiments at once (issue 3): which lever makes size, existence and relations come?

On 2 CPU cores one stage-0 chat LM costs ~70 minutes and one quickstart ~9, so the levers left open in issue 3
(a bigger chat LM, a scene-in-words format with the attributes after the name, a longer focus phase, a longer
stage 2) could not be compared there. On one GPU each takes a few minutes, so they run side by side, one process
each, and every process writes what it has measured as it goes:

    qs_cuda        `run_quickstart` on CUDA (bf16 autocast): the GPU smoke test of the whole pipeline
    s2_x3, s2_x8   stage 1 + stage 2 from the shipped backbones with 3x / 8x the stage-2 steps
    lm_*           retrain only the chat LM (shipped tokenizer and vision tower), text-only QA per kind, then
                   stage 1 + stage 2 at the quickstart's 800 steps (and 2400 if the deadline allows)
    cells_*        rerun only the LM's cell-word phase (stage 0, phase 3) on the focus-phase recipe directory
                   given by --focus-dir (``add_lm_phase``, on the GPU), then the same stage 1 + stage 2; the
                   directories come back as DIR/<variant>.tar, ready to replace minillava/assets/tiny

    python benchmarks/gpu_sweep.py --out DIR [--deadline 420] [--smoke]

``--smoke`` runs every variant for a handful of steps on the CPU (the check before spending device time).
The merged results are DIR/results.json; DIR/sweep.log has every process's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ASSETS = ROOT / "minillava" / "assets" / "tiny"

BIG_LM = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=8,
              num_key_value_heads=8)  # 2.5x the shipped chat LM's parameters
LM_VARIANTS = {  # name -> (LM shape overrides, scene format, focus steps multiplier)
    "lm_control": ({}, "caption", 1),
    "lm_big": (BIG_LM, "caption", 1),
    "lm_attr": ({}, "attributes_after_name", 1),
    "lm_big_attr": (BIG_LM, "attributes_after_name", 1),
    "lm_focus_x3": ({}, "caption", 3),
    "lm_mixed": ({}, "mixed", 1),  # the next lead: both lookups, hoping to keep shape (caption) and exists (attr)
}
CELL_VARIANTS = {  # name -> Stage0Config overrides of the cell-word phase (issue 3: position and relations)
    "cells_what": dict(lm_cells_steps=1000),  # the shipped recipe, rerun on the GPU: the noise to compare with
    "cells_what_x3": dict(lm_cells_steps=3000),
    "cells_where": dict(lm_cells_steps=1000, lm_cells_where=True),
    "cells_where_x3": dict(lm_cells_steps=3000, lm_cells_where=True),
    "cells_where_x5": dict(lm_cells_steps=5000, lm_cells_where=True),
    "cells_what_x3_color": dict(lm_cells_steps=3000, lm_cells_color=True),
    "cells_where_x3_color": dict(lm_cells_steps=3000, lm_cells_where=True, lm_cells_color=True),
}
VARIANTS = ["qs_cuda", "s2_x3", "s2_x8", *LM_VARIANTS, "s2_given_lm", *CELL_VARIANTS]
SMOKE = ["data_images=200", "stage1_steps=2", "stage2_steps=2"]  # --smoke: every path, a handful of steps


def attributes_after_name(record) -> str:
    """'Scene: red circle, large, top left; blue star, small, bottom right.' — name first, so the attribute a
    question asks for is the token(s) right after the match (what an induction head copies)."""
    from minillava.data.teachers import position
    return "Scene: " + "; ".join(f"{o.color} {o.category}, {o.size}, {position(o, record)}"
                                 for o in record.objects) + "."


class Recorder:
    def __init__(self, path: Path, name: str):
        self.path, self.data, self.t0 = path, {"variant": name, "events": []}, time.perf_counter()

    def __call__(self, key: str, value) -> None:
        self.data[key] = value
        self.data["events"].append([key, round(time.perf_counter() - self.t0, 1)])
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"[{self.data['variant']}] {key}: {json.dumps(value)[:400]}", flush=True)


def train_and_eval(out: Path, overrides: list[str], smoke: bool) -> dict:
    """Stage 1 + stage 2 + held-out exact match (the quickstart's 1800 questions), from ``overrides``."""
    from minillava.config import load_config
    from minillava.data.records import load_split
    from minillava.eval.accuracy import evaluate_exact, heldout_questions
    from minillava.quickstart import prepare_data
    from minillava.train import run_stage

    base = [f"data_dir={out.parent / 'data'}", "device=auto", "eval_every=0"]
    if smoke:
        base += SMOKE
    cfg = load_config("tiny", [*base, *overrides])
    data_dir = prepare_data(cfg, log=lambda *a: None)
    t = time.perf_counter()
    model, s1 = run_stage(cfg, 1, out / "stage1", progress=False)
    model, s2 = run_stage(cfg, 2, out / "stage2", model=model, processor=s1["processor"], features=s1["features"],
                          progress=False)
    seconds = time.perf_counter() - t
    rows = heldout_questions(load_split(data_dir, "test"))
    result = evaluate_exact(model, s1["processor"], rows[:60] if smoke else rows, data_dir)
    return {"accuracy": {k: v["accuracy"] for k, v in result["per_kind"].items()},
            "multi_object": {k: v["multi_object"] for k, v in result["per_kind"].items() if k != "all"},
            "loss": [s2["first_loss"], s2["last_loss"]], "train_seconds": round(seconds, 1), "overrides": overrides}


def train_lm(name: str, work: Path, record: Recorder, smoke: bool) -> Path:
    """Phase 1 + focus phase of the chat LM (the shipped recipe's data and seeds), a variant's shape and format."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from minillava import stage0  # stage0.lm.scene_in_words is the one lm.py reads: patch it there
    from minillava.model.backbones import tiny_lm_config

    shape, fmt, focus_mult = LM_VARIANTS[name]
    caption_format = stage0.lm.scene_in_words
    if fmt == "attributes_after_name":
        stage0.lm.scene_in_words = attributes_after_name  # every text-only sample and the text QA check use it
    elif fmt == "mixed":  # each scene in one of the two formats, fixed per scene so the text QA check is stable
        stage0.lm.scene_in_words = lambda r: (attributes_after_name if r.image_id % 2 else caption_format)(r)
    cfg = stage0.Stage0Config()
    cfg = dataclasses.replace(cfg, lm_focus_steps=cfg.lm_focus_steps * focus_mult)
    if smoke:
        cfg = dataclasses.replace(cfg, scenes=300, lm_steps=3, lm_focus_steps=3, lm_cells_steps=3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scenes, held_out = stage0.recipe_scenes(cfg)
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "lm")
    record("example_scene", stage0.lm.scene_in_words(scenes[0][0]))
    torch.manual_seed(cfg.seed)
    config = tiny_lm_config(len(tokenizer), tokenizer)
    for k, v in shape.items():
        setattr(config, k, v)
    lm = LlamaForCausalLM(config).to(device)
    record("lm_parameters", sum(p.numel() for p in lm.parameters()))
    t = time.perf_counter()
    stage0.fit_lm(lm, tokenizer, lambda rng: stage0.text_sample(rng.choice(scenes)[0], rng),
                  random.Random(cfg.seed + 1), steps=cfg.lm_steps, batch=cfg.lm_batch, lr=cfg.lm_lr, warmup=0.03,
                  max_length=cfg.max_length, desc=name, report=lambda s, l: None)
    record("phase1_seconds", round(time.perf_counter() - t, 1))
    record("text_qa_phase1", {k: v["accuracy"] for k, v in stage0.text_qa_accuracy(lm, tokenizer, held_out).items()})
    t = time.perf_counter()
    lm = stage0.focus_chat_lm(cfg, lm, scenes, tokenizer, None, log=lambda *a: None)
    record("focus_seconds", round(time.perf_counter() - t, 1))
    qa = stage0.text_qa_accuracy(lm, tokenizer, held_out)
    record("text_qa", {k: v["accuracy"] for k, v in qa.items()})
    record("text_qa_majority", {k: v["majority"] for k, v in qa.items()})
    if fmt == "mixed":  # and each format on its own, to compare with the one-format LMs
        for label, fn in (("caption", caption_format), ("attributes_after_name", attributes_after_name)):
            stage0.lm.scene_in_words = fn
            record(f"text_qa_{label}", {k: v["accuracy"] for k, v in
                                         stage0.text_qa_accuracy(lm, tokenizer, held_out).items()})
    lm_dir = work / "lm"
    lm.to(torch.bfloat16).save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    return lm_dir


def cell_phase(name: str, work: Path, focus_dir: str, record: Recorder, smoke: bool) -> Path:
    """``add_lm_phase`` with a variant's cell-word settings on a copy of the focus-phase recipe directory."""
    import shutil

    import torch

    from minillava import stage0
    assets = work / "assets"
    shutil.rmtree(assets, ignore_errors=True)
    shutil.copytree(focus_dir, assets)
    cfg = dataclasses.replace(stage0.Stage0Config(), **CELL_VARIANTS[name])
    if smoke:  # a few steps on 300 scenes; the copy then claims that smaller recipe, so add_lm_phase accepts it
        cfg = dataclasses.replace(cfg, scenes=300, lm_cells_steps=3)
        recipe = json.loads((assets / "recipe.json").read_text())
        recipe["config_hash"] = dataclasses.replace(cfg, lm_cells_steps=0).hash()
        (assets / "recipe.json").write_text(json.dumps(recipe))
    log = []
    recipe = stage0.add_lm_phase(assets, cfg, log=log.append, device="cuda" if torch.cuda.is_available() else "cpu")
    record("phase_log", log)
    for key in ("config_hash", "seconds", "machines", "text_qa", "text_qa_cells"):
        record(key, recipe.get(key))
    return assets


def worker(name: str, work: Path, deadline: float, smoke: bool, lm_dir_arg: str | None = None,
           focus_dir: str | None = None) -> None:
    import torch
    torch.set_num_threads(2)
    work.mkdir(parents=True, exist_ok=True)
    record = Recorder(work / "result.json", name)
    record("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    try:
        if name == "qs_cuda":
            from minillava.quickstart import run_quickstart
            over = ["device=auto"] + (SMOKE if smoke else [])
            metrics = run_quickstart(work / "qs", overrides=over, progress=False, log=lambda *a: None)
            record("quickstart", {k: metrics[k] for k in ("accuracy", "baselines", "seconds", "relative_score")})
        elif name in CELL_VARIANTS:
            over = [f"lm_name={cell_phase(name, work, focus_dir, record, smoke) / 'lm'}"]
            record("stage2_800", train_and_eval(work / "run800", over, smoke))
            if time.time() < deadline - 200:
                record("stage2_2400", train_and_eval(work / "run2400", [*over, f"stage2_steps={4 if smoke else 2400}"],
                                                     smoke))
        elif name in ("s2_x3", "s2_x8"):
            steps = {"s2_x3": 2400, "s2_x8": 6400}[name]
            record("stage2", train_and_eval(work / "run", [f"stage2_steps={4 if smoke else steps}"], smoke))
        else:  # an LM variant, or stage 2 from a chat LM an earlier sweep trained (s2_given_lm, --lm-dir)
            given = name == "s2_given_lm"
            over = [f"lm_name={lm_dir_arg if given else train_lm(name, work, record, smoke)}"]
            record("stage2_800", train_and_eval(work / "run800", over, smoke))
            if given or time.time() < deadline - 200:
                record("stage2_2400", train_and_eval(work / "run2400", [*over, f"stage2_steps={4 if smoke else 2400}"],
                                                     smoke))
    except Exception:
        record("error", traceback.format_exc()[-3000:])


def merge(work: Path, out: Path) -> dict:
    results = {}
    for name in VARIANTS:
        f = work / name / "result.json"
        if f.is_file():
            try:
                results[name] = json.loads(f.read_text())
            except json.JSONDecodeError:  # caught mid-write
                pass
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def table(results: dict) -> str:
    kinds = ["color", "count", "shape", "position", "exists", "size", "relation", "all"]
    lines = ["variant/measure       " + " ".join(f"{k[:8]:>8}" for k in kinds)]
    for name, r in results.items():
        for key in ("text_qa", "text_qa_cells", "stage2", "stage2_800", "stage2_2400", "quickstart"):
            if key in r:
                acc = ({k: v["accuracy"] if isinstance(v, dict) else v for k, v in r[key].items()}
                       if key.startswith("text_qa") else r[key]["accuracy"])
                lines.append(f"{name[:15]:<15} {key[-6:]:>6}" + " ".join(f"{acc.get(k, float('nan')):>8.3f}"
                                                                      for k in kinds))
        if "error" in r:
            lines.append(f"{name}: ERROR {r['error'].strip().splitlines()[-1]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/gpu_sweep")
    ap.add_argument("--deadline", type=float, default=420, help="seconds; stragglers are killed, results kept")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    ap.add_argument("--lm-dir", default=None, help="s2_given_lm: the chat LM directory to start stage 2 from")
    ap.add_argument("--focus-dir", default=None, help="cells_*: a recipe directory made without the cell-word phase")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline-at", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    if args.worker:
        return worker(args.worker, work / args.worker, args.deadline_at, args.smoke, args.lm_dir, args.focus_dir)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else VARIANTS
    deadline = time.time() + args.deadline
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "2"}
    log = open(out / "sweep.log", "w")
    procs = {n: subprocess.Popen([sys.executable, __file__, "--out", str(out), "--work", str(work), "--worker", n,
                                  "--deadline-at", str(deadline)] + (["--smoke"] if args.smoke else [])
                                 + (["--lm-dir", args.lm_dir] if args.lm_dir else [])
                                 + (["--focus-dir", args.focus_dir] if args.focus_dir else []),
                                 stdout=log, stderr=subprocess.STDOUT, env=env) for n in names}
    while any(p.poll() is None for p in procs.values()) and time.time() < deadline:
        time.sleep(5)
        merge(work, out)
    for n, p in procs.items():
        if p.poll() is None:
            p.kill()
            print(f"{n}: killed at the deadline")
    results = merge(work, out)
    for name in names:  # the trained chat LMs come back too, to be shipped if one is the lever
        lm_dir = work / name / "lm"
        # the small-LM variants only: a bigger LM would not fit the CPU quickstart's 10 minutes (and files are capped)
        if name in ("lm_attr", "lm_focus_x3") and (lm_dir / "model.safetensors").is_file():
            with tarfile.open(out / f"{name}.tar", "w") as tar:
                tar.add(lm_dir, arcname=name)
        assets = work / name / "assets"
        if name in CELL_VARIANTS and (assets / "lm" / "model.safetensors").is_file():
            with tarfile.open(out / f"{name}.tar", "w") as tar:  # lm/ and recipe.json (the tower is unchanged)
                tar.add(assets / "lm", arcname=f"{name}/lm")
                tar.add(assets / "recipe.json", arcname=f"{name}/recipe.json")
    print(table(results))


if __name__ == "__main__":
    main()
