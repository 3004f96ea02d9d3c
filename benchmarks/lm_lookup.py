"""Where the stand-in chat LM looks when it names the colour of "the {shape}" (issue 25, item 1).

The tiny quickstart reads colour no better than its chat LM does with the scene written as nine cell words
(text-only, ``stage0.text_qa_accuracy``). This script takes that LM apart on the held-out scenes of the stage-0
recipe, multi-object scenes only (in a one-object scene any colour present is right):

- **answers**: teacher-forced to `` The {shape} is``, the colour the LM ranks first among the six: the asked
  object's, another object's in the scene, or a colour absent from the scene; by the number of objects.
- **attention**: for each layer and head, seen from the question's shape word and from the position that predicts
  the colour: the share of all attention on the nine cell words (``on_cells``), and of that, the share on
  occupied cells (``on_objects``; uniform: objects / 9) and on the asked object's cell (``on_asked``; uniform 1/9).
- **rows**: how additive the 648 object cell-word embeddings still are (least squares on one-hot cell + size +
  colour + shape: R², and each factor's share of the variance), i.e. whether training scrambled the structure
  ``stage0.add_cell_words`` starts them with.

    python benchmarks/lm_lookup.py                      # the shipped LM
    python benchmarks/lm_lookup.py --lm DIR --out benchmarks/results/lm_lookup_DIR.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minillava.conversation import get_template, prompt_ids  # noqa: E402
from minillava.data.shapes import COLORS, SHAPES, SIZES  # noqa: E402
from minillava.model.backbones import backbone_path  # noqa: E402
from minillava.stage0 import (EMPTY_CELL, Stage0Config, cell_word, cell_words, recipe_scenes,  # noqa: E402
                              scene_in_cell_words)
from minillava.stage0.vocab import _what_and_cell  # noqa: E402


def colour_questions(held_out, limit: int) -> list:
    """(layout, asked object) for multi-object held-out scenes: every object whose shape is unique in its scene."""
    rows = []
    for _, layout, _ in held_out:
        shapes = collections.Counter(o.shape for o in layout)
        rows += [(layout, o) for o in layout if len(layout) > 1 and shapes[o.shape] == 1]
    return rows[:limit]


def forced_ids(tokenizer, layout, asked, template) -> list[int]:
    """"What color is the {shape}?" about ``asked`` in the scene's cell words, teacher-forced to `` The {shape} is``:
    the next token names the colour."""
    prompt = prompt_ids(f"{scene_in_cell_words(layout, True)}\nWhat color is the {asked.shape}?", tokenizer,
                        template, image_tokens=1).tolist()
    return prompt + tokenizer(f" The {asked.shape} is", add_special_tokens=False)["input_ids"]


def colour_named(logits: torch.Tensor, colour_id: dict) -> str:
    """The colour whose word the LM ranks first among the six, from its next-token ``logits``."""
    return max(COLORS, key=lambda c: logits[colour_id[c]].item())


@torch.no_grad()
def colour_accuracy(lm, tokenizer, rows, template) -> float:
    """Share of ``rows`` (``colour_questions``) where the LM names the asked object's colour, teacher-forced."""
    colour_id = {c: tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for c in COLORS}
    was_training = lm.training
    lm.eval()
    right = sum(colour_named(lm(input_ids=torch.tensor([forced_ids(tokenizer, layout, asked, template)])).logits[0, -1],
                             colour_id) == asked.color for layout, asked in rows)
    lm.train(was_training)
    return round(right / len(rows), 3)


@torch.no_grad()
def lookup(lm, tokenizer, rows) -> dict:
    """Teacher-forced colour choice and per-head attention on the asked cell (eager attention)."""
    template = get_template("vicuna_v1")
    colour_id = {c: tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for c in COLORS}
    cell_ids = {tokenizer.convert_tokens_to_ids(word) for word in cell_words(True)}
    layers, heads = lm.config.num_hidden_layers, lm.config.num_attention_heads
    where = ("question", "answer")  # the question's shape word; the position that predicts the colour
    sums = {(w, m): torch.zeros(layers, heads) for w in where for m in ("on_cells", "on_objects", "on_asked")}
    outcome = collections.Counter()
    by_objects = collections.defaultdict(collections.Counter)
    for layout, asked in rows:
        ids = forced_ids(tokenizer, layout, asked, template)
        shape_id = tokenizer(f" {asked.shape}", add_special_tokens=False)["input_ids"][0]
        out = lm(input_ids=torch.tensor([ids]), output_attentions=True)
        named = colour_named(out.logits[0, -1], colour_id)
        kind = "right" if named == asked.color else \
            "another object's" if named in {o.color for o in layout} else "absent from the scene"
        outcome[kind] += 1
        by_objects[len(layout)][kind] += 1
        cells = [i for i, t in enumerate(ids) if t in cell_ids]  # the nine cell words, row-major
        assert len(cells) == 9, f"expected 9 cell words, found {len(cells)}"
        occupied = [cells[o.cell] for o in layout]
        positions = {"question": ids.index(shape_id, cells[-1]), "answer": len(ids) - 1}  # the question's
        for layer, attention in enumerate(out.attentions):  # (1, H, T, T)
            for w, position in positions.items():
                row = attention[0, :, position]  # (H, T): what this position attends to, per head
                on_cells = row[:, cells].sum(-1)
                sums[w, "on_cells"][layer] += on_cells
                sums[w, "on_objects"][layer] += row[:, occupied].sum(-1) / on_cells.clamp_min(1e-12)
                sums[w, "on_asked"][layer] += row[:, cells[asked.cell]] / on_cells.clamp_min(1e-12)
    n = len(rows)
    return {"n": n, "answers": {k: round(v / n, 3) for k, v in outcome.items()},
            "answers_by_objects": {k: {kind: round(c / sum(v.values()), 3) for kind, c in v.items()}
                                   | {"n": sum(v.values())} for k, v in sorted(by_objects.items())},
            "attention": {f"{w}/{m}": (t / n).round(decimals=2).tolist() for (w, m), t in sums.items()},
            "uniform": {"on_asked": round(1 / 9, 3),
                        "on_objects": round(sum(len(layout) for layout, _ in rows) / 9 / n, 3)}}


def row_structure(lm, tokenizer) -> dict:
    """R² of the object cell-word rows against an additive cell + size + colour + shape model, and each factor's
    share of the rows' variance."""
    table = lm.get_input_embeddings().weight.detach().float()
    factors = [("cell", range(9)), ("size", list(SIZES)), ("colour", list(COLORS)), ("shape", list(SHAPES))]
    width = sum(len(values) for _, values in factors) + 1
    design, rows = [], []
    for what, cell in _what_and_cell(True):
        if what == EMPTY_CELL:
            continue
        size, colour, shape = what[1:-1].split("-")
        x, offset = torch.zeros(width), 0
        for (_, values), value in zip(factors, (cell, size, colour, shape)):
            x[offset + list(values).index(value)] = 1
            offset += len(values)
        x[-1] = 1
        design.append(x)
        rows.append(table[tokenizer.convert_tokens_to_ids(cell_word(what, cell, True))])
    x, y = torch.stack(design), torch.stack(rows)  # (648, 24), (648, D)
    solution = torch.linalg.pinv(x) @ y  # (24, D); the one-hot groups and the constant are collinear: min-norm fit
    total = (y - y.mean(0)).pow(2).sum()
    result = {"r2_additive": round(float(1 - (y - x @ solution).pow(2).sum() / total), 3)}
    offset = 0
    for name, values in factors:
        part = x[:, offset:offset + len(values)] @ solution[offset:offset + len(values)]
        result[f"share_{name}"] = round(float((part - part.mean(0)).pow(2).sum() / total), 3)
        offset += len(values)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lm", default=str(backbone_path("tiny", "lm")), help="chat-LM directory (default: shipped)")
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--out", default="benchmarks/results/lm_lookup.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    tokenizer = AutoTokenizer.from_pretrained(args.lm)
    lm = AutoModelForCausalLM.from_pretrained(args.lm, dtype=torch.float32, attn_implementation="eager").eval()
    _, held_out = recipe_scenes(Stage0Config())
    result = {"lm": args.lm, **lookup(lm, tokenizer, colour_questions(held_out, args.questions)),
              "rows": row_structure(lm, tokenizer)}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "attention"}, indent=1))
    for name, table in result["attention"].items():
        print(f"{name} (layer × head):")
        for layer, row in enumerate(table):
            print(f"  layer {layer}: " + "  ".join(f"{v:.2f}" for v in row))

if __name__ == "__main__":
    main()
