"""`minillava quickstart`: the whole paper on the embedded default, offline, on a CPU — or on a COCO subset.

    scenes or COCO (COCO format) → §3 rule teacher → [stage 0: tiny CLIP + chat LM, only with --from-scratch]
      → stage 1 (W only, captions) → stage 2 (W + LM, instructions) → held-out evaluation → figures

With ``data_source=coco`` (the ``small`` and ``paper`` presets) the same run reads a subset made by
`minillava data coco` (downloaded when ``data_dir`` has none) and holds a tenth of its images out for evaluation.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .config import load_config
from .data.heldout import coco_data
from .data.llava_json import write_llava_json
from .data.records import load_split
from .data.shapes import write_shapes_dataset
from .data.teachers import generate_rule_instructions, instructions_file, teacher_options
from .files import write_json
from .paper import TABLE4_FULL
from .train import run_stage


def prepare_data(cfg, log=print) -> Path:
    """Scenes (shapes) and the rule teacher's stage-2 instructions, made once; a rerun reuses them."""
    data_dir = Path(cfg.data_dir)
    stamp = data_dir / "settings.json"
    settings = {"images": cfg.data_images, "seed": cfg.seed, "size": cfg.image_size}
    if cfg.data_source == "shapes" and not (stamp.is_file() and json.loads(stamp.read_text()) == settings):
        counts = write_shapes_dataset(data_dir, cfg.data_images, cfg.seed, size_px=cfg.image_size)
        for stale in data_dir.glob(f"instruct_{cfg.data_split}*.json"):  # made from the scenes replaced
            stale.unlink()
        write_json(stamp, settings)  # last: scenes interrupted before here are made again
        log(f"data: {counts} scenes in {data_dir}")
    instruct = instructions_file(data_dir, cfg.data_split, **teacher_options(cfg))
    if not cfg.instruct_json and not instruct.is_file():
        samples = generate_rule_instructions(load_split(data_dir, cfg.data_split), seed=cfg.seed,
                                             **teacher_options(cfg))
        write_llava_json(instruct, samples)
        log(f"data: {len(samples)} rule-teacher instruction samples in {instruct}")
    return data_dir


def run_quickstart(out_dir: str | Path = "runs/quickstart", *, from_scratch: bool = False, preset: str = "tiny",
                   overrides: list[str] | None = None, progress: bool = True, log=print) -> dict:
    from .eval.accuracy import answer_habits, evaluate_exact, heldout_questions

    out_dir = Path(out_dir).resolve()  # model directories record data_dir; keep it valid from any cwd
    overrides = [f"data_dir={out_dir / 'data'}", *(overrides or [])]
    cfg = load_config(preset, overrides)
    seconds: dict[str, float] = {}
    t_total = time.perf_counter()

    t = time.perf_counter()
    if cfg.data_source == "coco":  # train on the subset's train part; evaluate on the held-out rest
        if from_scratch:
            raise ValueError("--from-scratch trains the tiny stand-in backbones on the embedded scenes; "
                             f"preset {preset!r} starts from hub checkpoints")
        coco_data(cfg, out_dir / "data", log)
        overrides = [*overrides, f"data_dir={out_dir / 'data'}", "data_split=train"]
        cfg = load_config(preset, overrides)
    data_dir = prepare_data(cfg, log)
    test_records = load_split(data_dir, "test")
    seconds["data"] = time.perf_counter() - t

    seconds["stage0"] = 0.0
    if from_scratch:
        from .stage0 import run_stage0
        t = time.perf_counter()
        run_stage0(out_dir / "stage0", log=log)
        cfg = load_config(preset, [*overrides, f"vision_name={out_dir / 'stage0' / 'vision'}",
                                   f"lm_name={out_dir / 'stage0' / 'lm'}"])
        seconds["stage0"] = time.perf_counter() - t

    t = time.perf_counter()
    model, s1 = run_stage(cfg, 1, out_dir / "stage1", progress=progress)
    seconds["stage1"] = time.perf_counter() - t  # includes computing Z_v once for every training image
    log(_stage_line(1, s1, seconds["stage1"]))
    if "cell_words" in s1:
        a = s1["cell_words"]
        log(f"stage 1: of which W fitted to the LM's cell words, {a['steps']} steps in {a['seconds']:.0f} s, loss "
            f"{a['first_loss']:.4f} -> {a['last_loss']:.4f}")

    processor = s1["processor"]
    rows = heldout_questions(test_records)
    t = time.perf_counter()
    after_stage1 = evaluate_exact(model, processor, rows, data_dir)
    seconds["eval"] = time.perf_counter() - t

    t = time.perf_counter()
    model, s2 = run_stage(cfg, 2, out_dir / "stage2", model=model, processor=processor, features=s1["features"],
                          progress=progress)
    seconds["stage2"] = time.perf_counter() - t
    log(_stage_line(2, s2, seconds["stage2"]))

    t = time.perf_counter()
    final = evaluate_exact(model, processor, rows, data_dir)
    blank = evaluate_exact(model, processor, rows, data_dir, blank_image=True)
    relative = bench_relative_scores(model, processor, test_records, data_dir, out_dir / "bench", cfg)
    seconds["eval"] += time.perf_counter() - t
    log(f"eval: held-out accuracy {final['per_kind']['all']['accuracy']:.3f}, bench in {out_dir / 'bench'}")

    t = time.perf_counter()
    from .viz.figures import make_figures
    measured = make_figures(out_dir / "stage2", out_dir / "figures")
    seconds["figures"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_total

    per_kind = final["per_kind"]
    metrics = {
        "preset": cfg.preset, "seed": cfg.seed,
        "relative_score": {k: v["score"] for k, v in relative.items()},
        "accuracy": {k: v["accuracy"] for k, v in per_kind.items()},
        "accuracy_multi_object": {k: v["multi_object"] for k, v in per_kind.items() if k != "all"},
        "ci95": {k: v["ci95"] for k, v in per_kind.items()},
        "questions": {k: v["n"] for k, v in per_kind.items()},
        "answer_habits": answer_habits(final["answers"]),
        "baselines": {"blank_image": {k: v["accuracy"] for k, v in blank["per_kind"].items()},
                      "stage1_only": {k: v["accuracy"] for k, v in after_stage1["per_kind"].items()},
                      "majority": {k: v["majority"] for k, v in per_kind.items() if k != "all"}},
        "loss": {"stage1": [s1["first_loss"], s1["last_loss"]], "stage2": [s2["first_loss"], s2["last_loss"]],
                 **({"stage1_cell_words": [s1["cell_words"]["first_loss"], s1["cell_words"]["last_loss"]]}
                    if "cell_words" in s1 else {})},
        "parameters": parameter_counts(model),
        "grounding": grounding(measured),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "machine": kernel_settings(),
        "model": str(out_dir / "stage2"),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    with open(out_dir / "answers.jsonl", "w") as f:
        for row in final["answers"]:
            f.write(json.dumps(row) + "\n")
    (out_dir / "report.md").write_text(report(metrics))
    log(report(metrics))
    return metrics


def grounding(measured: dict) -> dict | str:
    """The grounding measures of `make_figures` for metrics.json, or why there are none (they need scenes whose
    objects have known colours and cells)."""
    if isinstance(measured["attention_focus"], str):
        return measured["attention_focus"]
    return {"attention_focus": measured["attention_focus"],
            "attention_by_head": {k: v for k, v in measured["attention_by_head"].items() if k != "per_head_selection"},
            "nearest_word_after_stage1": measured["nearest_word_after_stage1"],
            "nearest_word_after_stage2": measured["nearest_word_after_stage2"],
            "nearest_cell_word_after_stage1": measured["nearest_cell_word_after_stage1"],
            "nearest_cell_word_after_stage2": measured["nearest_cell_word_after_stage2"]}


def _stage_line(stage: int, summary: dict, seconds: float) -> str:
    """One line per finished stage, so a log that gets no progress bars still shows where the run is."""
    first, last = summary.get("first_loss"), summary.get("last_loss")
    loss = f", loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else ""
    return f"stage {stage}: {summary.get('steps')} steps in {seconds:.0f} s{loss}"


def bench_relative_scores(model, processor, records, data_dir: Path, bench_dir: Path, cfg) -> dict:
    """§5 LLaVA-Bench-style relative score (candidate / reference × 100) on 30 held-out scenes, rule judge."""
    from .eval.bench import answer_bench, make_embedded_bench, read_questions, write_answers
    from .eval.judges import RuleJudge, evaluate_answers

    # the images are copied into bench_dir/images, so `minillava eval --bench bench_dir/questions.jsonl` finds them
    paths = make_embedded_bench(records, bench_dir, n_images=min(30, len(records)), seed=cfg.seed,
                                image_root=data_dir)
    rows = answer_bench(model, processor, read_questions(paths["questions"]), data_dir, model_id="minillava",
                        template=cfg.stage2_template)
    answers = write_answers(bench_dir / "answers.jsonl", rows)
    result = evaluate_answers(paths["questions"], answers, RuleJudge(), paths["references"], paths["context"])
    return result["relative"]


def parameter_counts(model) -> dict[str, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"vision": count(model.vision), "projector": count(model.projector), "lm": count(model.lm)}


def report(metrics: dict) -> str:
    """A markdown summary: accuracy per question kind beside both baselines, its habits, and the time per stage."""
    from .eval.accuracy import habits_table

    base = metrics["baselines"]
    lines = ["# minillava quickstart", "",
             f"Preset `{metrics['preset']}`, seed {metrics['seed']}. Held-out images, never seen in training.",
             "", "| question kind | after stage 2 | multi-object scenes | blank image | stage 1 only | majority answer |",
             "|---|---|---|---|---|---|"]
    for kind, acc in metrics["accuracy"].items():
        multi = metrics["accuracy_multi_object"].get(kind)
        majority = base["majority"].get(kind)  # none for "all": a mix of kinds has no single majority answer
        lines.append(f"| {kind} | {acc:.3f} | {'' if multi is None else f'{multi:.3f}'} | "
                     f"{base['blank_image'].get(kind, 0):.3f} | {base['stage1_only'].get(kind, 0):.3f} | "
                     f"{'' if majority is None else f'{majority:.3f}'} |")
    habits = metrics.get("answer_habits")
    if habits:
        lines += ["", "Looking or answering by habit? Per question form: the commonest key and the commonest answer the "
                      "model gave (each with its share of the form's questions), and the key it gets least often right. "
                      "**habit**: one answer to ≥ 90% of questions whose keys vary.", "",
                  *habits_table(habits)]
    rel = metrics["relative_score"]
    lines += ["", "LLaVA-Bench-style relative score (rule judge, 30 held-out scenes; the paper's full-data row "
              "from Table 4 for scale — a different benchmark and judge):", "",
              "| | conv | detail | complex | all |", "|---|---|---|---|---|",
              "| minillava " + metrics["preset"] + " | " + " | ".join(
                  "—" if rel.get(k) is None else f"{rel[k]:.1f}" for k in ("conv", "detail", "complex", "all")) + " |",
              "| LLaVA (paper, Table 4, GPT-4 judge) | " + " | ".join(
                  f"{TABLE4_FULL[k]:.1f}" for k in ("conv", "detail", "complex", "all")) + " |"]
    lines += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in metrics["seconds"].items()]
    g = metrics.get("grounding")
    if isinstance(g, str):
        lines += ["", f"Grounding measures skipped: each {g}."]
    elif g:
        focus, s1, s2 = g["attention_focus"], g["nearest_word_after_stage1"], g["nearest_word_after_stage2"]
        fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        lines += ["", f"Grounding: answer tokens that name a colour put {fmt(focus['mean_ratio'])}× the uniform share "
                      f"of attention on the asked object's patch ({focus['n_tokens']} tokens). The nearest colour/shape "
                      f"word to an object's projected patch names its colour or shape for {fmt(s1['rate'])} of "
                      f"{s1['n_objects']} objects after stage 1 and {fmt(s2['rate'])} after stage 2."]
        c1, c2 = g.get("nearest_cell_word_after_stage1"), g.get("nearest_cell_word_after_stage2")
        if c1 and c2:  # the stand-in LM's cell words (stage0.vocab): what the LM was taught to read scenes in
            lines += ["", f"Of the LM's 657 cell words, the one nearest to an object's projected patch is its own "
                          f"for {fmt(c1['word'])} of objects after stage 1 and {fmt(c2['word'])} after stage 2; it "
                          f"names what stands there for {fmt(c1['what'])} and {fmt(c2['what'])}, the cell for "
                          f"{fmt(c1['cell'])} and {fmt(c2['cell'])} (chance 1/72 and 1/9)."]
        head = g.get("attention_by_head")
        if head and head.get("best_head"):
            layer, index = (i + 1 for i in head["best_head"])  # counted from 1, as in the notebooks
            lines += ["", f"The most grounded head (layer {layer}, head {index}, picked "
                          f"on other scenes) puts {fmt(head['heldout_ratio'])}× the uniform share on the named "
                          f"object; the mean over all heads is {fmt(head['mean_heads_heldout'])}×."]
    p = metrics["parameters"]
    lines += ["", f"Parameters: vision {p['vision']:,} (frozen), projector {p['projector']:,}, LM {p['lm']:,}."]
    m = metrics.get("machine")
    if m:
        pinned = ", ".join(f"{k}={v}" for k, v in m["pinned"].items()) or "none (the CPU's own)"
        lines += ["", f"Kernels: torch {m['torch']} on {m['cpu_capability']} kernels, {m['threads']} threads; pinned: "
                      f"{pinned}. The same kernels give the same digits on any machine; others differ in the last "
                      "ones."]
    return "\n".join(lines) + "\n"


def kernel_settings() -> dict:
    """Which CPU kernels this process runs: results are bit-exact only between runs on the same kernels
    (README, "Testing")."""
    import os

    import torch

    pins = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "pinned": {k: os.environ[k] for k in pins if os.environ.get(k)}}


def cached_quickstart(preset: str = "tiny", overrides: list[str] | None = None,
                      cache_dir: str | Path | None = None) -> dict:
    """The quickstart model for the notebooks: trained once per cache directory and settings, then reused.

    Notebooks 00 and 04–10 all look at the same trained model; the first one to need it pays for training
    (silently, so every notebook prints the same thing whether it trained or reused). ``preset`` and ``overrides``
    are the notebooks' parameters cell: ``small`` trains on a COCO subset (``data_dir``, downloaded there when
    missing) with the hub checkpoints or the local directories that ``vision_name`` and ``lm_name`` name.
    """
    import hashlib

    overrides = list(overrides or [])
    cache_dir = Path(cache_dir or os.environ.get("MINILLAVA_NOTEBOOK_CACHE", Path.home() / ".cache" / "minillava"))
    # fields left "off" ("" / False / 0) are left out of the key, so adding an opt-in feature to Config does not
    # invalidate every cached model; any field that is switched on, or any changed value, still does
    fields = {k: v for k, v in load_config(preset, overrides).to_dict().items() if v not in ("", False, 0, None)}
    # a model trained on other CPU kernels differs in its last digits: keep one per kernel setting
    kernels = {k: v for k, v in kernel_settings().items() if k != "threads"}
    key = hashlib.sha1(json.dumps([fields, shipped_recipe_hash(), kernels]).encode()).hexdigest()[:10]
    out = cache_dir / f"quickstart-{key}"
    if not (out / "metrics.json").is_file():
        run_quickstart(out, preset=preset, overrides=overrides, progress=False, log=lambda message: None)
    return json.loads((out / "metrics.json").read_text()) | {"out_dir": str(out)}


def shipped_recipe_hash() -> str:
    """The stage-0 config hash of the shipped tiny backbones ('' without them); results made from them record it."""
    from .model.backbones import TINY_DIR
    recipe = TINY_DIR / "recipe.json"
    return json.loads(recipe.read_text()).get("config_hash", "") if recipe.is_file() else ""
