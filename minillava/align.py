"""Stage 1's "compatible visual tokenizer" (§4.2), made explicit for the stand-in chat LM (ours, not the paper's).

§4.2 describes stage 1 as aligning the image features H_v with the frozen LLM's word embeddings. LLaVA gets there
through captions alone. The stand-in LM has exact words for the tiny preset's image tokens: stage 0 taught it to
read a scene as nine cell words, one per 3 × 3 cell ("<top-left:large-red-circle>", ``stage0.vocab``), and the tiny
tower gives one patch token per cell. With ``stage1_cell_word_steps`` = S, after stage 1's captions W is fitted for S
more steps to put each cell's token h = W · Z_v[cell] on the input embedding E[w] of that cell's word w:

    min_W  mean ‖h − E[w]‖²  +  λ · CE( cos(h, E[cell words]) / τ,  w )        Z_v: (B, 9, Dv), E: (V, D), 657 cell words

The squared error brings the tokens to the words' scale and region; alone it leaves the nearest cell word wrong for
three object tokens in four (most cells are empty, and the 657 words share most of their embedding), so the second
term, a classification over the cell words by cosine (λ = ``stage1_cell_word_ce``, τ = 0.05), makes the right word
the nearest one.

The targets come from the scenes' layouts, a supervision the paper's stage 1 does not have, and only the stand-in LM
has cell words: the tiny preset runs the fit (1,000 steps), the hub presets the paper's stage 1 alone. Why it is
there (measured in benchmarks/README.md): from captions alone, W lands an object's token on its own cell word for
0.15 of objects, and in stage 2 the LM then learns to answer "What is at the {position}?" from the data's prior
("nothing") instead of from the image; given the scene as its cell words, stage 2 keeps the LM's lookup.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .data.records import ImageRecord
from .data.shapes import scene_objects

LR = 1e-3  # AdamW, no weight decay, cosine to 0 without warmup: the measured setting (benchmarks/README.md)
TEMPERATURE = 0.05  # of the cosine logits over the cell words
CAPTIONS_ONLY = "captions_only"  # the stage-1 model directory's copy of W from before the fit


def captions_only_dir(stage1_dir: str | Path) -> Path:
    """Where a stage-1 run keeps W as the paper's stage 1 (the captions alone) leaves it: ``captions_only/`` when the
    fit ran after the captions (``run_stage`` writes it), else the stage-1 model directory itself."""
    stage1_dir = Path(stage1_dir)
    return stage1_dir / CAPTIONS_ONLY if (stage1_dir / CAPTIONS_ONLY).is_dir() else stage1_dir


def require_cell_words(tokenizer) -> None:
    """Stop, in one line, when the LM has no cell words to fit W onto (any LM but the stand-in chat LM)."""
    from .stage0.vocab import has_cell_words

    if not has_cell_words(tokenizer, where=True):
        raise ValueError("stage1_cell_word_steps: the LM's tokenizer has no cell words (\"<top-left:...>\"); only the "
                         "tiny preset's stand-in chat LM (lm_name=tiny) reads scenes in them — set "
                         "stage1_cell_word_steps=0")


def cell_word_targets(tokenizer, records: list[ImageRecord]) -> torch.Tensor:
    """(B, 9) token ids of each scene's nine cell words, top left to bottom right: the order of its patch tokens."""
    from .stage0.vocab import scene_in_cell_words

    require_cell_words(tokenizer)
    ids = [tokenizer(scene_in_cell_words(scene_objects(r), where=True), add_special_tokens=False)["input_ids"]
           for r in records]
    return torch.tensor(ids)


def cell_word_table(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The 657 cell words as (token ids (657,), unit-length input embeddings (657, D)), on the LM's device."""
    from .stage0.vocab import cell_words

    embeddings = model.lm.get_input_embeddings().weight.detach()
    vocab = torch.tensor(model.tokenizer.convert_tokens_to_ids(cell_words(where=True)), device=embeddings.device)
    return vocab, torch.nn.functional.normalize(embeddings[vocab], dim=-1)


@torch.no_grad()
def nearest_cell_words(model, image_features: torch.Tensor) -> torch.Tensor:
    """Z_v (B, N, Dv) → (B, N) token id of the cell word nearest (cosine) to each projected token H_v = W · Z_v."""
    vocab, words = cell_word_table(model)
    h = torch.nn.functional.normalize(model.project(image_features.to(vocab.device)), dim=-1)
    return vocab[(h @ words.T).argmax(-1)]


def align_to_cell_words(model, features: dict[str, torch.Tensor], records: list[ImageRecord], steps: int,
                        batch: int, seed: int, ce_weight: float = 0.0) -> dict:
    """Fit W (the model's projector) for ``steps`` steps of ``batch`` scenes drawn with replacement from
    ``records`` (their Z_v in ``features``: file name → (9, Dv)); returns the first and last batch's loss."""
    start = time.perf_counter()
    records = [r for r in records if r.file_name in features]
    device = next(model.projector.parameters()).device
    z = torch.stack([features[r.file_name] for r in records]).to(device)  # (B, 9, Dv)
    ids = cell_word_targets(model.tokenizer, records).to(device)  # (B, 9)
    if ids.shape[1] != z.shape[1]:
        raise ValueError(f"stage1_cell_word_steps: {ids.shape[1]} cell words per scene but {z.shape[1]} image "
                         "tokens; the alignment needs one patch token per cell (the tiny tower)")
    target = model.lm.get_input_embeddings().weight.detach()  # (V, D): the frozen LM's word embeddings
    vocab, words = cell_word_table(model)  # (657,), (657, D)
    classes = torch.full((target.shape[0],), -1, dtype=torch.long, device=device)
    classes[vocab] = torch.arange(len(vocab), device=device)  # token id → its index among the cell words
    optimizer = torch.optim.AdamW(model.projector.parameters(), lr=LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    draw = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        rows = torch.randint(len(records), (batch,), generator=draw).to(device)
        h = model.project(z[rows])  # (batch, 9, D)
        loss = torch.nn.functional.mse_loss(h, target[ids[rows]])
        if ce_weight:
            logits = torch.nn.functional.normalize(h, dim=-1) @ words.T / TEMPERATURE  # (batch, 9, 657)
            loss = loss + ce_weight * torch.nn.functional.cross_entropy(logits.flatten(0, 1), classes[ids[rows]].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return {"steps": steps, "first_loss": losses[0], "last_loss": losses[-1],
            "seconds": time.perf_counter() - start}
