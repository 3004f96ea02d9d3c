"""Two diagrams drawn from a live model: the paper's Fig. 1 (§4.1) with this model's shapes, and the two
training stages' freeze policy (§4.2). Drawn by code, so they always show the model a notebook built."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

TRAINS, FROZEN, DATA = "#f5b66b", "#cfd8e3", "#ffffff"


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, size: float = 9) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="black", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, linewidth=0.9, color="black"))


def architecture_figure(model, question_tokens: int, title: str = ""):
    """LLaVA's network (the paper's Fig. 1) with ``model``'s sizes: X_v → g → Z_v → W → H_v, beside the
    instruction's word embeddings H_q, into f_φ, which writes the answer X_a. Returns the figure."""
    vision, lm = model.vision.config, model.lm.config
    n, dv, d = model.num_image_tokens, vision.hidden_size, lm.hidden_size
    fig, ax = plt.subplots(figsize=(10.5, 4.2))
    ax.set_xlim(0, 10.5); ax.set_ylim(0, 4.2); ax.axis("off")
    _box(ax, 9.3, 3.6, 2.0, 0.6, "X_a  language response\n(answer tokens)", DATA)
    _box(ax, 5.25, 2.6, 9.0, 0.7, f"language model  f_φ   ({lm.num_hidden_layers} layers, width D = {d})", FROZEN, 10)
    _arrow(ax, (9.3, 2.95), (9.3, 3.3))
    _box(ax, 2.4, 1.6, 2.0, 0.55, f"H_v  ({n}, {d})", DATA)
    _box(ax, 7.6, 1.6, 2.0, 0.55, f"H_q  ({question_tokens}, {d})", DATA)
    _box(ax, 4.4, 1.6, 1.5, 0.55, "projection  W", TRAINS)
    _box(ax, 4.4, 0.7, 1.5, 0.55, f"Z_v  ({n}, {dv})", DATA)
    _box(ax, 2.4, 0.7, 2.0, 0.55, f"vision encoder  g\n({vision.num_hidden_layers} layers)", FROZEN)
    _box(ax, 0.6, 0.7, 1.0, 0.55, f"X_v  image\n{vision.image_size} px", DATA, 8)
    _box(ax, 7.6, 0.7, 2.0, 0.55, "X_q  language\ninstruction", DATA)
    _arrow(ax, (1.1, 0.7), (1.4, 0.7))           # X_v → g
    _arrow(ax, (3.4, 0.7), (3.65, 0.7))          # g → Z_v
    _arrow(ax, (4.4, 0.975), (4.4, 1.325))       # Z_v → W
    _arrow(ax, (3.65, 1.6), (3.4, 1.6))          # W → H_v
    _arrow(ax, (2.4, 1.875), (2.4, 2.25))        # H_v → f_φ
    _arrow(ax, (7.6, 0.975), (7.6, 1.325))       # X_q → H_q (the LM's own word embeddings)
    _arrow(ax, (7.6, 1.875), (7.6, 2.25))        # H_q → f_φ
    ax.text(7.75, 1.15, "word embeddings", fontsize=7, va="center")
    ax.text(0.1, 4.0, title or "LLaVA, §4.1 Fig. 1, drawn with this model's shapes (N image tokens, widths Dv and D)",
            fontsize=9, va="top")
    ax.text(0.1, 3.65, "orange: trained in both stages; grey: pretrained (f_φ trains in stage 2, g never)",
            fontsize=8, va="top", color="dimgray")
    fig.tight_layout()
    return fig


def freeze_figure(parts: dict[str, int], trains: dict[int, set[str]]):
    """The two stages side by side (§4.2): one box per part, orange where it trains, grey where frozen, with its
    parameter count. ``parts``: name → parameter count; ``trains``: stage → names of the parts that train."""
    total = sum(parts.values())
    fig, axes = plt.subplots(1, len(trains), figsize=(4.2 * len(trains), 2.6))
    for ax, (stage, names) in zip(axes, sorted(trains.items())):
        ax.set_xlim(0, 4); ax.set_ylim(0, len(parts) + 0.6); ax.axis("off")
        n_train = sum(parts[name] for name in names)
        ax.set_title(f"stage {stage}: {n_train:,} of {total:,} parameters train ({n_train / total:.1%})", fontsize=9)
        for row, (name, count) in enumerate(parts.items()):
            y = len(parts) - row - 0.4
            state = "trains" if name in names else "frozen"
            _box(ax, 2.0, y, 3.8, 0.75, f"{name}\n{count:,} parameters · {state}",
                 TRAINS if name in names else FROZEN, 8.5)
    fig.tight_layout()
    return fig


def loss_mask_figure(ids, labels, tokenizer, title: str, per_row: int = 150):
    """One sample's tokens as boxes (§4.2, eq. 3): green where the label carries loss, grey for context, orange for
    the N image positions (drawn as one box). ``ids`` and ``labels`` are (T,) tensors. Returns the figure."""
    from matplotlib.patches import Rectangle

    from ..conversation import loss_mask_pieces

    boxes = loss_mask_pieces(ids, labels, tokenizer)
    colours = {"loss": "#8fd18f", "context": "#e3e3e3", "image": TRAINS}
    placed, x, y = [], 0.0, 0
    for text, kind in boxes:
        width = max(len(text), 1) + 1.2   # in character widths
        if x + width > per_row:
            x, y = 0.0, y + 1
        placed.append((x, y, width, text, kind)); x += width
    fig, ax = plt.subplots(figsize=(11, 0.3 * (y + 1) + 0.7))
    for x, y_row, width, text, kind in placed:
        ax.add_patch(Rectangle((x, -y_row - 0.8), width - 0.3, 0.7, color=colours[kind]))
        ax.text(x + 0.45, -y_row - 0.45, text, fontsize=7.5, family="monospace", va="center")
    ax.set_xlim(0, per_row); ax.set_ylim(-y - 1, 0); ax.axis("off")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, ["carries loss", "context (label −100)", "image positions (label −100)"], fontsize=8,
              loc="upper center", bbox_to_anchor=(0.5, 0), ncol=3, frameon=False)
    ax.set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    return fig
