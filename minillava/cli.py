"""`minillava …` — a thin command-line layer over the package's functions.

Longer than most modules because it is every subcommand's parser and its few-line handler, side by side, so a
flag's help text and what it does are read together.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .data.records import DataError
from .paths import MODEL_FILES, PathArg, check_paths

IN_MODEL = PathArg("dir", MODEL_FILES, "a minillava model folder")
IN_COCO = PathArg("dir", ("annotations",), "a COCO-format dataset folder")


def _quiet_defaults() -> None:
    """Quiet by default, through the libraries' own switches (a variable the user set wins): progress bars only
    on a terminal, no transformers / huggingface_hub loading bars, transformers' advice only at error level."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")  # a log file gets no bar redraws (TQDM_DISABLE= keeps them)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars use it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _progress() -> bool:
    """One bar per stage on a terminal; none when stderr is a file or a pipe, or TQDM_DISABLE is set (tqdm
    reads any non-empty value, "0" included, as "disable"; TQDM_DISABLE= with no value asks for bars in a log)."""
    return sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")


def _data_shapes(args: argparse.Namespace) -> None:
    from .data.shapes import write_shapes_dataset

    start = time.perf_counter()
    counts = write_shapes_dataset(args.out, args.images, args.seed, size_px=args.size, max_objects=args.max_objects)
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    print(f"wrote {total} scenes to {args.out} ({', '.join(f'{k} {v}' for k, v in counts.items())}) "
          f"in {seconds:.1f} s ({total / seconds:.0f} images/s)")


def _add_data_shapes(sub) -> None:
    """`minillava data shapes`: its arguments, beside its handler above."""
    p = sub.add_parser("shapes", help="embedded scenes in COCO format",
                       epilog="example: minillava data shapes --out data/shapes --images 2000 --seed 0")
    p.add_argument("--out", type=PathArg("out_dir", ("annotations", "images", "settings.json")), required=True)
    p.add_argument("--images", type=int, default=2000, help="total over train/val/test (80/10/10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="image side in pixels (96 for CPU, 224/336 for CLIP)")
    p.add_argument("--max-objects", type=int, default=4)
    p.set_defaults(func=_data_shapes)


def _data_coco(args: argparse.Namespace) -> None:
    from .data.coco import prepare_coco

    summary = prepare_coco(args.split, args.limit, args.out, seed=args.seed, base_url=args.base_url,
                           cache_dir=args.cache_dir, skip_bad=args.skip_bad)
    print(json.dumps(summary, indent=1))


def _add_data_coco(sub) -> None:
    """`minillava data coco`: its arguments, beside its handler above."""
    p = sub.add_parser("coco", help="download COCO 2017 (resumable, verified) and take a subset",
                       epilog="example: minillava data coco --split val2017 --limit 500 --out data/coco")
    p.add_argument("--split", default="val2017", choices=["val2017", "train2017"])
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--out", type=PathArg("out_dir", ("annotations", "images")), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-url", default=None, help="mirror of images.cocodataset.org (or $MINILLAVA_COCO_URL)")
    p.add_argument("--cache-dir", type=PathArg("out_dir"),
                   default=None, help="where zips are kept (or $MINILLAVA_CACHE)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad images instead of stopping")
    p.set_defaults(func=_data_coco)


def _data_instruct(args: argparse.Namespace) -> None:
    from .data.llava_json import RESPONSE_TYPES, write_llava_json, dataset_stats
    from .data.records import load_split

    types = tuple(t.strip() for t in args.types.split(","))
    for t in types:
        if t not in RESPONSE_TYPES:
            raise DataError(f"--types: unknown response type {t!r}; expected some of {', '.join(RESPONSE_TYPES)}")
    skipped: list[str] = []
    records = load_split(args.coco, args.split, skip_bad=args.skip_bad, check_images=True, skipped=skipped)
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    start = time.perf_counter()
    if args.teacher == "rule":
        from .data.teachers import generate_rule_instructions

        samples = generate_rule_instructions(records, types, seed=args.seed)
        write_llava_json(args.out, samples)
        report = {"done": len(samples)}
    else:
        from .data.chat_teacher import ChatClient, generate_chat_instructions, jsonl_to_llava_json

        if not args.base_url or not args.model:
            raise DataError("--teacher chat needs --base-url and --model (the key is read from --api-key-env)")
        client = ChatClient(args.base_url, args.model, api_key_env=args.api_key_env)
        jsonl = Path(str(args.out) + ".partial.jsonl")  # survives interruption; rerun to resume
        report = generate_chat_instructions(records, jsonl, client=client, types=types)
        samples = jsonl_to_llava_json(jsonl, args.out)
    seconds = time.perf_counter() - start
    stats = dataset_stats(samples if isinstance(samples, list) else [])
    print(f"{args.teacher} teacher: {stats['samples']} samples from {len(records)} images in {seconds:.1f} s "
          f"({stats['samples'] / max(seconds, 1e-9):.0f} samples/s); skipped {len(skipped)} bad records -> {args.out}")
    print(json.dumps({"report": report, "stats": stats}, indent=1))


def _add_data_instruct(sub) -> None:
    """`minillava data instruct`: its arguments, beside its handler above."""
    p = sub.add_parser("instruct", help="§3 instruction data as LLaVA JSON",
                       epilog="example: minillava data instruct --coco data/shapes --split train "
                              "--teacher rule --out data/instruct_train.json")
    p.add_argument("--coco", type=IN_COCO, required=True, help="a COCO-format directory (shapes or coco subset)")
    p.add_argument("--split", required=True)
    p.add_argument("--teacher", choices=["rule", "chat"], default="rule")
    p.add_argument("--out", type=PathArg("out_file"), required=True)
    p.add_argument("--types", default="conv,detail,complex")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    p.add_argument("--base-url", help="chat teacher: an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="chat teacher: model name")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.set_defaults(func=_data_instruct)


def _data_stats(args: argparse.Namespace) -> None:
    from .data.llava_json import dataset_stats, read_llava_json

    print(json.dumps(dataset_stats(read_llava_json(args.file)), indent=1))


def _add_data_stats(sub) -> None:
    """`minillava data stats`: its arguments, beside its handler above."""
    p = sub.add_parser("stats", help="counts per type, turns and lengths of a LLaVA JSON file",
                       epilog="example: minillava data stats data/shapes/instruct_train.json")
    p.add_argument("file", type=PathArg("file"))
    p.set_defaults(func=_data_stats)


def _train(args: argparse.Namespace) -> None:
    if args.stage == 0:
        from .config import config_from_overrides
        from .stage0 import Stage0Config, run_stage0

        if args.preset != "tiny":
            raise ValueError("stage 0 exists only for the tiny preset: other presets start from hub checkpoints")
        cfg = config_from_overrides(Stage0Config, args.overrides)
        recipe = run_stage0(args.out, cfg)
        print(json.dumps({k: recipe[k] for k in ("config_hash", "seconds", "probes", "text_qa")}, indent=1))
        return
    from .config import load_config
    from .quickstart import prepare_data
    from .train import run_stage

    cfg = load_config(args.preset, args.overrides, args.config)
    prepare_data(cfg)
    _, summary = run_stage(cfg, args.stage, args.out, resume=args.resume)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("features", "processor")}, indent=1))


def _add_train(sub) -> None:
    """`minillava train`: its arguments, beside its handler above."""
    p = sub.add_parser("train", help="train one stage (0: tiny backbones, 1: alignment, 2: instruction tuning)",
                       epilog="example: minillava train --stage 1 --preset tiny --out runs/s1 stage1_steps=200")
    p.add_argument("--stage", type=int, choices=[0, 1, 2], required=True)
    p.add_argument("--preset", default="tiny", help="tiny | small | paper")
    # recipe.json: a stage-0 folder, e.g. minillava/assets/tiny; tower.json: one whose tower is trained already
    p.add_argument("--out", type=PathArg("out_dir", ("checkpoints", "log.jsonl", *MODEL_FILES, "recipe.json",
                                                     "tower.json")), required=True)
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    p.add_argument("--config", type=PathArg("file"), help="a YAML or JSON file of config fields")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config fields, e.g. stage2_lr=1e-4")
    p.set_defaults(func=_train)


def _quickstart(args: argparse.Namespace) -> None:
    from .quickstart import run_quickstart

    run_quickstart(args.out, from_scratch=args.from_scratch, preset=args.preset, overrides=args.overrides,
                   progress=_progress())


def _add_quickstart(sub) -> None:
    """`minillava quickstart`: its arguments, beside its handler above."""
    p = sub.add_parser("quickstart", help="the main job: data → stage 1 → stage 2 → eval → figures",
                       epilog="example: minillava quickstart --out runs/quickstart")
    p.add_argument("--out", type=PathArg("out_dir", ("metrics.json", "data", "stage0", "stage1", "stage2", "bench",
                                                     "figures")), default=Path("runs/quickstart"))
    p.add_argument("--from-scratch", action="store_true", help="also re-run stage 0 (tiny CLIP and chat LM)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_quickstart)


def _chat(args: argparse.Namespace) -> None:
    from .inference import answer_batch, pixels_for
    from .model.build import load_model

    model, processor, cfg = load_model(args.model)
    pixels = pixels_for(processor, [args.image])
    options = dict(template=cfg.stage2_template, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                   temperature=max(args.temperature, 1e-5))
    if args.question:
        print(answer_batch(model, [args.question], pixel_values=pixels, **options)[0])
        return
    history: list[tuple[str, str]] = []
    print("Ask about the image (empty line or Ctrl-D to stop).")
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        reply = answer_batch(model, [question], pixel_values=pixels, history=[history], **options)[0]
        print(f"minillava> {reply}")
        history.append((question, reply))


def _add_chat(sub) -> None:
    """`minillava chat`: its arguments, beside its handler above."""
    p = sub.add_parser("chat", help="answer a question about an image (interactive without QUESTION)",
                       epilog="example: minillava chat --model runs/quickstart/stage2 --image scene.png "
                              "'What color is the circle?'")
    p.add_argument("--model", type=IN_MODEL, required=True)
    p.add_argument("--image", type=PathArg("file"), required=True)
    p.add_argument("question", nargs="?")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.set_defaults(func=_chat)


def _ablate(args: argparse.Namespace) -> None:
    from .eval.ablations import ABLATION_BUDGET, run_ablations

    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else None
    result = run_ablations(args.out, args.results, seeds=seeds, arms=arms,
                           budget=[*ABLATION_BUDGET, *args.overrides], progress=not args.quiet)
    print((Path(args.results) / "ablations.md").read_text())
    print(f"wrote {args.results}/ablations.json, .md and .png ({len(result['runs'])} runs)")


def _add_ablate(sub) -> None:
    """`minillava ablate`: its arguments, beside its handler above."""
    p = sub.add_parser("ablate", help="the paper's ablation tables (Table 4, Table 8, MLP vs linear) on the tiny preset",
                       epilog="example: minillava ablate --out runs/ablate --seeds 0,1,2  (about 40 min on 2 cores; "
                              "an interrupted run resumes)")
    p.add_argument("--out", type=PathArg("out_dir"), default=Path("runs/ablate"), help="one directory per arm and seed")
    p.add_argument("--results", type=PathArg("out_dir"),
                   default=Path("results"), help="where ablations.json/.md/.png go")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default="", help="comma-separated subset of the arms (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="budget changes, e.g. stage2_steps=600")
    p.set_defaults(func=_ablate)


def _figures(args: argparse.Namespace) -> None:
    from .viz.figures import make_figures

    measured = make_figures(args.model, args.out)
    print(json.dumps({k: v for k, v in measured.items() if k != "modality_gap"}, indent=1))


def _add_figures(sub) -> None:
    """`minillava figures`: its arguments, beside its handler above."""
    p = sub.add_parser("figures", help="every figure (loss, attention, projector) from a quickstart model",
                       epilog="example: minillava figures --model runs/quickstart/stage2 --out figures/")
    p.add_argument("--model", type=IN_MODEL, required=True, help="a stage-2 model directory of a quickstart run")
    p.add_argument("--out", type=PathArg("out_dir"), default=Path("figures"))
    p.set_defaults(func=_figures)


def _export(args: argparse.Namespace) -> None:
    from .model.export import export_model

    print(f"exported to {export_model(args.model, args.out)}")


def _add_export(sub) -> None:
    """`minillava export`: its arguments, beside its handler above."""
    p = sub.add_parser("export", help="write transformers LlavaForConditionalGeneration format",
                       epilog="example: minillava export --model runs/quickstart/stage2 --out hf_llava")
    p.add_argument("--model", type=IN_MODEL, required=True)
    p.add_argument("--out", type=PathArg("out_dir", MODEL_FILES), required=True)
    p.set_defaults(func=_export)


def _demo(args: argparse.Namespace) -> None:
    from .demo import GRADIO_MISSING, run_demo

    try:
        run_demo(args.model, host=args.host, port=args.port, max_new_tokens=args.max_new_tokens)
    except ImportError as e:
        if str(e) != GRADIO_MISSING:
            raise
        print(f"minillava: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _add_demo(sub) -> None:
    """`minillava demo`: its arguments, beside its handler above."""
    p = sub.add_parser("demo", help="a web chat about an image (Gradio), with the attention map",
                       epilog="example: minillava demo --model runs/quickstart/stage2 --port 7860  "
                              "(needs: pip install 'minillava[demo]')")
    p.add_argument("--model", type=IN_MODEL, required=True)
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=_demo)


def _data_llava_instruct(args: argparse.Namespace) -> None:
    from .data.llava_instruct import format_report, prepare_llava_instruct

    report = prepare_llava_instruct(args.json, args.coco, args.out, split=args.split, tokenizer=args.tokenizer,
                                    template=args.template, response_type=args.type)
    print(format_report(report))
    print(f"wrote {report['kept']} samples to {args.out}")


def _add_data_llava_instruct(sub) -> None:
    """`minillava data llava-instruct`: its arguments, beside its handler above."""
    p = sub.add_parser("llava-instruct", help="the published LLaVA-Instruct-150K/80K JSON, kept to a COCO subset",
                       epilog="example: minillava data llava-instruct --json llava_instruct_150k.json "
                              "--coco data/coco_train --split train2017 --out data/coco_train/instruct.json")
    p.add_argument("--json", type=PathArg("file"),
                   required=True, help="llava_instruct_150k.json (or -80k, or one of its parts)")
    p.add_argument("--coco", type=IN_COCO, required=True, help="a subset made by `minillava data coco`")
    p.add_argument("--split", default="train2017", help="LLaVA-Instruct uses COCO train2017 images")
    p.add_argument("--out", type=PathArg("out_file"), required=True)
    p.add_argument("--tokenizer", help="also check the per-turn tokenisation under --template (tiny, a dir or hub id)")
    p.add_argument("--template", default="vicuna_v1")
    p.add_argument("--type", choices=["conv", "detail", "complex"], help="tag every sample with this response type")
    p.set_defaults(func=_data_llava_instruct)


def _data_bench(args: argparse.Namespace) -> None:
    from .data.records import load_split
    from .eval.bench import make_embedded_bench

    paths = make_embedded_bench(load_split(args.coco, args.split), args.out, n_images=args.images, seed=args.seed,
                                image_root=args.coco / "images")
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))


def _add_data_bench(sub) -> None:
    """`minillava data bench`: its arguments, beside its handler above."""
    p = sub.add_parser("bench", help="an embedded LLaVA-Bench: 30 held-out images × 3 categories",
                       epilog="example: minillava data bench --coco data/shapes --split test --out runs/bench")
    p.add_argument("--coco", type=IN_COCO, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=PathArg("out_dir", ("questions.jsonl",)), required=True)
    p.add_argument("--images", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_data_bench)


# the authors' file names, looked for beside --bench when --references / --context are not given
REFERENCE_NAMES = ("references.jsonl", "answers_gpt4.jsonl", "qa90_gpt4_answer.jsonl")
CONTEXT_NAMES = ("context.jsonl", "caps_boxes_coco2014_val_80.jsonl")


def _beside(bench: Path, given: Path | None, names: tuple[str, ...], flag: str) -> Path:
    if given is not None:
        return given
    found = next((bench.parent / n for n in names if (bench.parent / n).is_file()), None)
    if found is None:
        raise DataError(f"{bench.parent}: none of {', '.join(names)} beside --bench; give {flag} FILE")
    return found


def _eval(args: argparse.Namespace) -> None:
    from .eval.bench import answer_bench, read_questions, resolve_image, write_answers
    from .eval.judges import ChatJudge, RuleJudge, evaluate_answers, format_table
    from .eval.published import format_summary, review_rows, summarize_reviews, write_reviews

    references = _beside(args.bench, args.references, REFERENCE_NAMES, "--references")
    context = _beside(args.bench, args.context, CONTEXT_NAMES, "--context")
    answers = args.answers
    if answers is None:
        if args.model is None:
            raise ValueError("give --model to answer the benchmark, or --answers with answers made elsewhere")
        from .model.build import load_model

        questions = read_questions(args.bench)
        images = args.images or args.bench.parent
        for q in questions:  # before loading the model: say where the images were looked for, and the flag
            if not resolve_image(images, q["image"]).is_file():
                raise DataError(f"{args.bench}: question_id {q['question_id']!r}: image {q['image']!r} is not in "
                                f"{images} (nor {images / 'images'}); give --images DIR")
        model, processor, cfg = load_model(args.model)
        rows = answer_bench(model, processor, questions, images, model_id=str(args.model),
                            template=cfg.stage2_template, progress=_progress())
        answers = write_answers(args.out.with_name(args.out.stem + "_answers.jsonl"), rows)
    if args.judge == "rule":
        judge = RuleJudge()
    else:
        from .data.chat_teacher import ChatClient

        if not args.base_url or not args.judge_model:
            raise ValueError("--judge chat needs --base-url and --judge-model (the key is read from --api-key-env)")
        client = ChatClient(args.base_url, args.judge_model, api_key_env=args.api_key_env, temperature=0.2)
        judge = ChatJudge(client, cache_path=args.out.with_name(args.out.stem + "_verdicts.jsonl"),
                          repeats=args.repeats)
    result = evaluate_answers(args.bench, answers, judge, references, context, progress=_progress())
    reviews = review_rows(result["per_question"], result["context_layout"])
    reviews_path = write_reviews(args.out.with_name(args.out.stem + "_reviews.jsonl"), reviews)
    result["summary"] = summarize_reviews(reviews)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if result["context_layout"] == "ours":  # our embedded bench: its table beside the paper's row, as before
        print(format_table(result["relative"], title=str(args.model or answers)))  # (notebook 09 shows this)
        return
    failed = (f"; {len(result['failed'])} question(s) without a verdict: {result['failed']}"
              if result["failed"] else "")
    print(f"answers {answers}\nreviews {reviews_path} (the authors' review format){failed}\nresult  {args.out}\n")
    print(format_summary(result["summary"], f"{args.model or answers}, judge {args.judge} "
                                            "(as llava/eval/summarize_gpt_review.py computes it)"))


def _add_eval(sub) -> None:
    """`minillava eval`: its arguments, beside its handler above."""
    p = sub.add_parser("eval", help="LLaVA-Bench relative scores per category (§5); the authors' files",
                       epilog="examples: minillava eval --model runs/quickstart/stage2 "
                              "--bench runs/quickstart/bench/questions.jsonl --judge rule;  "
                              "minillava eval --answers answers/llava.jsonl --bench qa90_questions.jsonl "
                              "--references qa90_gpt4_answer.jsonl --context caps_boxes_coco2014_val_80.jsonl "
                              "--judge chat --base-url http://127.0.0.1:8000/v1 --judge-model gpt-4")
    p.add_argument("--model", type=IN_MODEL, help="a model directory to answer the questions with")
    p.add_argument("--bench", type=PathArg("file"), required=True,
                   help="the questions (qa90_questions.jsonl, questions.jsonl, ...: any name)")
    p.add_argument("--references", type=PathArg("file"), help="reference answers (default: beside --bench, one of "
                   + ", ".join(REFERENCE_NAMES) + ")")
    p.add_argument("--context", type=PathArg("file"),
                   help="what the judge reads for each image (default: beside --bench, "
                   "one of " + ", ".join(CONTEXT_NAMES) + ")")
    p.add_argument("--images", type=PathArg("dir"),
                   help="the folder of the bench's images (default: beside --bench or in "
                   "its images/)")
    p.add_argument("--judge", choices=["rule", "chat"], default="rule")
    p.add_argument("--answers", type=PathArg("file"), help="score an answers file made elsewhere (the authors' format) "
                   "instead of running --model")
    p.add_argument("--out", type=PathArg("out_file"), default=Path("runs/eval/result.json"),
                   help="result.json; beside it result_answers.jsonl and result_reviews.jsonl (authors' formats)")
    p.add_argument("--base-url", help="chat judge: an OpenAI-compatible endpoint")
    p.add_argument("--judge-model", help="chat judge: model name")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--repeats", type=int, default=1, help="chat judge: judge each pair k times (mean ± sd)")
    p.set_defaults(func=_eval)


def _cache_features(args: argparse.Namespace) -> None:
    """Z_v of every image of a split, once, into the disk cache that training reads (feature_cache_dir)."""
    from types import SimpleNamespace

    from .config import load_config
    from .data.dataset import compute_features
    from .data.feature_cache import FeatureCache
    from .data.records import load_split
    from .model.backbones import load_vision
    from .model.vision import encode_images
    from .train import resolve_device

    cfg = load_config(args.preset, args.overrides, args.model_config)
    device = resolve_device(cfg.device)
    vision, processor = load_vision(cfg.vision_name, image_size=cfg.image_size, trust_remote_code=cfg.trust_remote_code)
    vision.to(device)
    tower = SimpleNamespace(vision=vision, select_layer=cfg.vision_select_layer, keep_cls=cfg.vision_keep_cls,
                            image_features=lambda px: encode_images(vision, px, cfg.vision_select_layer,
                                                                    cfg.vision_keep_cls))  # only g: no LM loaded
    names = sorted({r.file_name for r in load_split(args.data, args.split)})
    cache = FeatureCache.for_model(args.out, tower, processor, name=cfg.vision_name, dtype=cfg.feature_cache_dtype)
    start = time.perf_counter()
    cache.get(args.data / "images", names,
              lambda todo: compute_features(tower, args.data / "images", todo, processor, device=device))
    seconds = time.perf_counter() - start
    print(f"{cache.dir}: {cache.hits} images already cached, {cache.misses} computed in {seconds:.1f} s; "
          f"train with feature_cache_dir={args.out}")


def _add_cache_features(sub) -> None:
    """`minillava cache-features`: its arguments, beside its handler above."""
    p = sub.add_parser("cache-features", help="compute the frozen tower's features once into a disk cache",
                       epilog="example: minillava cache-features --preset tiny --data data/shapes --split train "
                              "--out data/feature_cache   (then train with feature_cache_dir=data/feature_cache)")
    p.add_argument("--preset", default="tiny", help="tiny | small | paper")
    p.add_argument("--model-config", type=PathArg("file"),
                   help="a YAML or JSON file of config fields (vision_name, layer, ...)")
    p.add_argument("--data", type=IN_COCO, required=True, help="a COCO-format directory")
    p.add_argument("--split", default="train")
    p.add_argument("--out", type=PathArg("out_dir"),
                   required=True, help="the cache root (config field feature_cache_dir)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config fields, e.g. vision_select_layer=-1 feature_cache_dtype=fp16")
    p.set_defaults(func=_cache_features)


def _plan(args: argparse.Namespace) -> None:
    from .config import load_config
    from .plan import format_plan, make_plan

    try:
        stage1, stage2 = (int(n) for n in args.text_tokens.split(","))
    except ValueError:
        raise ValueError(f"--text-tokens: expected two integers S1,S2, got {args.text_tokens!r}") from None
    plan = make_plan(load_config(args.preset, args.overrides, args.config), text_tokens={1: stage1, 2: stage2})
    print(json.dumps(plan, indent=1, default=str) if args.json else format_plan(plan))


def _add_plan(sub) -> None:
    """`minillava plan`: its arguments, beside its handler above."""
    p = sub.add_parser("plan", help="parameters, tokens, FLOPs and peak memory per stage; which GPUs fit",
                       epilog="example: minillava plan --preset small stage2_batch=32   (no download: configs "
                              "of the preset's backbones are built in; a local directory is read)")
    p.add_argument("--preset", default="small", help="tiny | small | paper")
    p.add_argument("--config", type=PathArg("file"), help="a YAML or JSON file of config fields")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--text-tokens", default="24,256", help="mean text tokens per sample in stage 1,2 (caption; "
                   "dialogue, with the template): about 1.3 × the words per sample that `minillava data stats` counts")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config fields, e.g. lora_r=64 grad_accum=2")
    p.set_defaults(func=_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minillava", description="An annotated, runnable LLaVA (Visual Instruction Tuning, NeurIPS 2023).",
        epilog="example: minillava data shapes --out data/shapes --images 2000 --seed 0")
    parser.add_argument("--version", action="version", version=f"minillava {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="make or inspect training data (§3)")
    data_cmds = data.add_subparsers(dest="data_command", required=True)
    for add in (_add_data_shapes,
                _add_data_coco,
                _add_data_instruct,
                _add_data_bench,
                _add_data_stats,
                _add_data_llava_instruct):
        add(data_cmds)
    for add in (_add_train,
                _add_plan,
                _add_quickstart,
                _add_chat,
                _add_eval,
                _add_ablate,
                _add_figures,
                _add_export,
                _add_demo,
                _add_cache_features):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:  # the command line, not a caller in Python (a test, a notebook): whose settings stay its own
        _quiet_defaults()
    from .data.chat_teacher import TeacherError  # torch-free, unlike the trainer

    try:
        check_paths(parser, args)
        args.func(args)
    except (DataError, ValueError, FileNotFoundError, TeacherError, RuntimeError) as e:
        # NonFiniteLoss can only come from the trainer, so it is looked up only if the trainer was imported:
        # light commands (`data shapes`, `data instruct`) keep starting without torch
        train = sys.modules.get("minillava.train")
        expected = not isinstance(e, RuntimeError) or isinstance(e, TeacherError) or (
            train is not None and isinstance(e, train.NonFiniteLoss))
        if not expected or os.environ.get("MINILLAVA_DEBUG"):
            raise
        print(f"minillava: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minillava: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
