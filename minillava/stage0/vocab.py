"""Stage 0b, phase 3: the scene as nine *cell words*, the text twin of the tiny tower's nine patch tokens.

§4.2 calls stage 1 training "a compatible visual tokenizer for the frozen LLM": W maps each patch feature into the
LM's word-embedding space. Here that is made literal. The LM learns a vocabulary of one word per thing a grid cell
can hold ("<large-red-circle>", "<empty>"), and to answer from a scene written as nine such words in row-major
order — the order the tower gives its patch tokens. Stage 1 could then map each patch onto the word for what stands
in its cell, and stage 2 find the reading circuit already there. Measured, it does less: stage 1 lands an object's
patch near its colour and shape *words* but seldom on its cell word (``viz.figures.nearest_cell_word_rate``,
notebook 08), so stage 2 still learns to read the image tokens; what the LM brings is the skill of answering from
a scene given as nine tokens.

With ``where`` each word also names its cell ("<top-left:large-red-circle>", 9 × 73 words), as a patch token
carries its place (the tower adds a position code to every patch). The LM's rotary positions rotate queries and
keys but add nothing to the values it copies, so "which of the nine am I reading" is otherwise not in the token.
"""

from __future__ import annotations

import dataclasses
import functools
import random

import torch
from transformers import LlamaForCausalLM

from ..conversation import IMAGE_TOKEN, get_template
from ..data.grid import GRID, POSITIONS
from ..data.llava_json import make_sample
from ..data.shapes import COLORS, SHAPES, SIZES, Shape
from .lm import FOCUS_KINDS, fit_lm, focus_sample, phase_report, text_sample

# what a cell can hold: nothing, or one of 2 sizes × 6 colours × 6 shapes (73 in all)
EMPTY_CELL = "<empty>"


def what_word(size: str, color: str, shape: str) -> str:
    """What a cell holds, as one word: "<large-red-circle>"."""
    return f"<{size}-{color}-{shape}>"


WHATS = [EMPTY_CELL] + [what_word(size, color, shape) for size in SIZES for color in COLORS for shape in SHAPES]


def cell_word(what: str, cell: int | None, where: bool = False) -> str:
    """``what`` ("<large-red-circle>") as it is written in ``cell``: itself, or with ``where`` "<top-left:...>"."""
    return f"<{POSITIONS[cell].replace(' ', '-')}:{what[1:]}" if where else what


def _what_and_cell(where: bool) -> list[tuple[str, int | None]]:
    """What each cell word names: (what, cell), cell None without ``where``."""
    return [(what, cell) for cell in (range(GRID * GRID) if where else [None]) for what in WHATS]


def cell_words(where: bool = False) -> list[str]:
    """Every cell word: ``WHATS`` (73), or with ``where`` each of them in each of the nine cells (657)."""
    return [cell_word(what, cell, where) for what, cell in _what_and_cell(where)]


def scene_in_cell_words(layout: list[Shape], where: bool = False) -> str:
    """Nine words, one per cell, top left to bottom right: what a 3×3 grid of patch tokens shows."""
    whats = {o.cell: what_word(o.size, o.color, o.shape) for o in layout}
    return "".join(cell_word(whats.get(c, EMPTY_CELL), c, where) for c in range(GRID * GRID))


def in_cell_words(record, layout: list[Shape], where: bool = False) -> str:
    """``text_qa_accuracy``'s ``in_words`` for the cell-word form."""
    return scene_in_cell_words(layout, where)


def add_cell_words(lm, tokenizer, where: bool = False) -> None:
    """Register ``cell_words(where)`` as whole words; each new embedding row starts near what it means: the mean
    of the pieces it names ("<large-red-circle>": " large", " red", " circle"), plus with ``where`` the mean of
    its cell's name (" top", " left")."""
    def mean(text: str, table):
        return table[tokenizer(" " + text, add_special_tokens=False)["input_ids"]].mean(0)

    tokenizer.add_tokens(cell_words(where))
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for table in (lm.get_input_embeddings().weight, lm.get_output_embeddings().weight):
            for what, cell in _what_and_cell(where):
                start = mean(what[1:-1].replace("-", " ") if what != EMPTY_CELL else "nothing", table)
                if cell is not None:
                    start = start + mean(POSITIONS[cell], table)
                table[tokenizer.convert_tokens_to_ids(cell_word(what, cell, where))] = start


def cell_words_sample(record, layout, rng: random.Random, where: bool = False, kinds=FOCUS_KINDS,
                      worked: bool = False) -> dict:
    """Phase-3 dialogue: a phase-1 or focus dialogue about the scene in cell words, or (1 in 5) a stage-1 sample
    in the ``plain`` template — cell words then a caption — the very task stage 1 sets the projector (``worked``:
    relations answered with both cells first)."""
    scene = scene_in_cell_words(layout, where)
    roll = rng.random()
    if roll < 0.2:
        sample = make_sample(f"cells_{record.image_id}", record.file_name, [(IMAGE_TOKEN, rng.choice(record.captions))])
        sample["conversations"][0]["value"] = scene
        return {**sample, "template": dataclasses.replace(get_template("plain"), keep_question=True)}
    if roll < 0.6:
        return text_sample(record, rng, scene=scene, worked=worked)
    return focus_sample(record, rng, scene=scene, kinds=kinds, worked=worked)


def has_cell_words(tokenizer, where: bool = False) -> bool:
    """Whether ``tokenizer`` knows ``cell_words(where)`` already (the lookup drill adds them first)."""
    return cell_words(where)[0] in tokenizer.get_vocab()


def cell_words_chat_lm(cfg, lm, scenes, tokenizer, held_out=None, log=print, also=None) -> LlamaForCausalLM:
    """Phase 3: a fresh AdamW on ``cell_words_sample`` dialogues (the tokenizer gains ``cell_words`` unless it has
    them). ``also = (share, draw)``: that share of the dialogues comes from ``draw(rng)`` instead (the drill's)."""
    lm.to(torch.bfloat16).to(torch.float32)
    torch.manual_seed(cfg.seed + 3)
    where = cfg.lm_cells_where
    in_words = functools.partial(in_cell_words, where=where)
    if not has_cell_words(tokenizer, where):
        add_cell_words(lm, tokenizer, where)
    steps = cfg.lm_cells_steps
    report = phase_report("0b-cells", steps, lm, tokenizer, held_out, log, in_words=in_words)
    kinds = FOCUS_KINDS + ("color",) * cfg.lm_cells_color

    def draw(rng: random.Random) -> dict:
        if also and rng.random() < also[0]:
            return also[1](rng)
        return cell_words_sample(*rng.choice(scenes)[:2], rng, where, kinds)
    return fit_lm(lm, tokenizer, draw,
                  random.Random(cfg.seed + 3), steps=steps, batch=cfg.lm_cells_batch, lr=cfg.lm_cells_lr,
                  warmup=0.05, max_length=cfg.max_length, desc="stage 0b: chat LM, cell words", report=report,
                  share_prefix=cfg.lm_share_prefix)

