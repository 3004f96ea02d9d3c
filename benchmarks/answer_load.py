"""Load: batch answering of many questions in one process keeps its memory flat (issue 8, item 6).

A tiny MiniLlava with random weights answers ``--questions`` questions about random images in batches, through the
same ``answer_batch`` + CLIP processor path as ``minillava chat`` and ``minillava eval``. The resident set size is
read from ``/proc/self/status`` (VmRSS) every ``--every`` questions; the report gives the growth after warm-up.

    python benchmarks/answer_load.py                        # 1000 questions → benchmarks/results/answer_load_cpu.json
    python benchmarks/answer_load.py --questions 200 --out /tmp/load.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUESTIONS = ["What color is the circle?", "How many shapes are there?", "Where is the square?",
             "Describe the image in detail.", "Which shape is closest to the top left corner?",
             "Is there a star in the picture?", "What is the largest object?"]


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc; no psutil)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def random_model(seed: int = 0, image_size: int = 96):
    """A tiny MiniLlava with random backbones and a BPE tokenizer trained on a few scene texts."""
    from transformers import CLIPVisionModel, LlamaForCausalLM

    from minillava.data.shapes import generate_split
    from minillava.model import MiniLlava
    from minillava.model.backbones import image_processor_class, tiny_lm_config, tiny_vision_config, \
        train_tiny_tokenizer
    from minillava.stage0 import CLIP_MEAN, CLIP_STD, corpus

    torch.manual_seed(seed)
    tokenizer = train_tiny_tokenizer(corpus(generate_split(60, "train", seed=5, size_px=image_size)), vocab_size=400)
    vision = CLIPVisionModel(tiny_vision_config(image_size)).eval()
    lm = LlamaForCausalLM(tiny_lm_config(len(tokenizer), tokenizer)).eval()
    processor = image_processor_class()(size={"shortest_edge": image_size},
                                        crop_size={"height": image_size, "width": image_size},
                                        image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return MiniLlava(vision, lm, tokenizer), processor


def run(questions: int = 1000, batch: int = 8, every: int = 100, max_new_tokens: int = 16, seed: int = 0,
        log=print) -> dict:
    from PIL import Image

    from minillava.inference import answer_batch

    model, processor = random_model(seed)
    generated: list[int] = []  # new tokens per batch (the KV cache grows with them)
    real_generate = model.generate

    def generate(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        generated.append(out.shape[1])
        return out
    model.generate = generate
    rng = np.random.default_rng(seed)
    samples, answered, answer_chars = [], 0, 0
    start_rss, t0 = rss_mib(), time.perf_counter()
    while answered < questions:
        n = min(batch, questions - answered)
        images = [Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(n)]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        asked = [QUESTIONS[(answered + i) % len(QUESTIONS)] for i in range(n)]
        answers = answer_batch(model, asked, pixel_values=pixels, max_new_tokens=max_new_tokens)
        assert len(answers) == n
        answer_chars += sum(len(a) for a in answers)
        before = answered
        answered += n
        if answered // every > before // every or answered == questions:
            gc.collect()
            samples.append({"questions": answered, "rss_mib": round(rss_mib(), 1),
                            "seconds": round(time.perf_counter() - t0, 2)})
            log(f"{answered:5d} questions  RSS {samples[-1]['rss_mib']:7.1f} MiB  {samples[-1]['seconds']:6.1f} s")
    warm = samples[0]["rss_mib"]  # after the first `every` questions: allocator pools and caches are warm
    rss = [s["rss_mib"] for s in samples]
    later = rss[len(rss) // 2:]
    return {
        "benchmark": "answer_load", "device": "cpu", "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "questions": questions, "batch": batch, "max_new_tokens": max_new_tokens,
        "rss_start_mib": round(start_rss, 1), "rss_after_warmup_mib": warm, "rss_end_mib": rss[-1],
        "rss_max_mib": max(rss), "growth_after_warmup_mib": round(rss[-1] - warm, 1),
        "growth_second_half_mib": round(later[-1] - later[0], 1),
        "growth_per_1000_questions_after_warmup_mib": round(
            (rss[-1] - warm) / max(1, questions - samples[0]["questions"]) * 1000, 2),
        "mean_answer_chars": round(answer_chars / questions, 1),
        "mean_new_tokens_per_batch": round(sum(generated) / len(generated), 2),
        "seconds": samples[-1]["seconds"], "questions_per_s": round(questions / samples[-1]["seconds"], 1),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "answer_load_cpu.json")
    args = parser.parse_args()
    result = run(args.questions, args.batch, args.every, args.max_new_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
