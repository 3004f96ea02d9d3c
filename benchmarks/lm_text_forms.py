"""Question form by question form: the chat LM reading the scene as cell words (text only) beside the quickstart
model reading the image (issue 25, item 3: is a form answered by habit because the LM cannot read it, or because
the image does not carry it?).

Text: ``stage0.text_qa_accuracy`` on the recipe's held-out scenes (3 questions each, greedy, the stage-2 template),
its answers grouped by ``eval.accuracy.answer_habits``. Image: the ``answer_habits`` a quickstart wrote into its
``metrics.json``. Prints one markdown table and writes both to ``--out``.

    python benchmarks/lm_text_forms.py --quickstart runs/quickstart/metrics.json
    python benchmarks/lm_text_forms.py --lm DIR --quickstart DIR2/metrics.json --out benchmarks/results/X.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minillava.eval.accuracy import answer_habits  # noqa: E402
from minillava.model.backbones import load_lm  # noqa: E402
from minillava.stage0 import Stage0Config, in_cell_words, recipe_scenes, text_qa_accuracy  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", default="tiny", help="a chat LM directory that knows the cell words (default: shipped)")
    parser.add_argument("--quickstart", help="a quickstart's metrics.json, for its per-form answers from the image")
    parser.add_argument("--questions", type=int, default=1200)
    parser.add_argument("--out", default="benchmarks/results/lm_text_forms.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    cfg = Stage0Config()
    _, held_out = recipe_scenes(cfg)
    lm, tokenizer = load_lm(args.lm)
    answers: list[dict] = []
    per_kind = text_qa_accuracy(lm, tokenizer, held_out, args.questions,
                                functools.partial(in_cell_words, where=cfg.lm_cells_where), answers=answers)
    text = answer_habits(answers)
    image = json.loads(Path(args.quickstart).read_text())["answer_habits"] if args.quickstart else {}

    def cell(h: dict | None) -> str:
        if not h:
            return "– | – | –"
        said, share = h["commonest_answer"]
        return f"{h['n']} | {h['accuracy']:.3f} | {said or '—'} ({share:.2f}){' **habit**' if h['habit'] else ''}"
    print("| question form | text: n | accuracy | commonest answer | image: n | accuracy | commonest answer |")
    print("|---|---|---|---|---|---|---|")
    for form in sorted(set(text) | set(image)):
        print(f"| {form} | {cell(text.get(form))} | {cell(image.get(form))} |")
    Path(args.out).write_text(json.dumps({"lm": args.lm, "quickstart": args.quickstart, "text_per_kind": per_kind,
                                          "text": text, "image": image}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
