"""`minillava figures --model DIR --out figures/`: every figure the README and notebooks show, from one model."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt  # without a display matplotlib picks a file backend; figures are closed after saving
import torch

from ..data.records import image_path, load_split
from ..data.grid import GRID, cell_of_box
from ..data.shapes import COLORS, SHAPES
from ..data.teachers import QA, answer_is_correct, position, stated_answer
from ..inference import pixels_for
from .attention import aggregate, answer_attention, draw_heatmap, object_attention_ratio, vision_cls_attention
from .projector import modality_gap, nearest_words, pca_map, projector_spectrum


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss(ax, log_path: Path, title: str, window: int = 5) -> None:
    """One stage's ``log.jsonl`` on ``ax``: each logged step's loss (one batch: noisy), their running mean over
    ``window`` records, the first step's loss (before any update of this stage), and the held-out loss; log scale."""
    log = [json.loads(x) for x in Path(log_path).read_text().splitlines()]
    steps, losses = [r["step"] for r in log], [r["loss"] for r in log]
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=1, label="train, one batch")
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    ax.plot(steps, smooth, color="tab:blue", lw=2, label=f"train, mean of {window} logged steps")
    if steps and steps[0] == 1:
        ax.plot(steps[:1], losses[:1], "s", color="black", label=f"step 1 (before any update): {losses[0]:.2f}")
    val = [(r["step"], r["val_loss"]) for r in log if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", label="held-out")
    ax.set_yscale("log"), ax.set_xlabel("optimiser step"), ax.set_ylabel("answer-token loss (nats)")
    ax.set_title(title), ax.legend(fontsize=7)


def loss_curves(run_dir: Path, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    plot_loss(axes[0], run_dir / "stage1" / "log.jsonl", "stage 1: only W trains")
    plot_loss(axes[1], run_dir / "stage2" / "log.jsonl", "stage 2: W and the LM train")
    return _save(fig, out / "loss_curves.png")


def object_patch(record, obj) -> int:
    """The patch index of an embedded-scene object (one object per grid cell = one patch in the tiny preset)."""
    return cell_of_box(obj.bbox, record.width, record.height)


def probe_question(record) -> str:
    """The question the attention figure asks: an embedded scene's colour at a cell; for COCO (no colours) what
    stands where its first box is, or what the image shows when it has no boxes."""
    if not record.objects:
        return "What is in the image?"
    obj = record.objects[0]
    return f"What color is the shape at the {position(obj, record)}?" if obj.color else \
        f"What is at the {position(obj, record)}?"


def answer_verdict(record, question: str, answer: str, width: int = 36) -> str:
    """The answer, wrapped to fit a panel title, marked against the scene's ground truth: right only when the asked
    object's colour is right and any shape the answer names is that object's ("The cross ... is yellow" of a yellow
    circle gets the colour and not the shape). COCO objects have no colour, so their answers are shown unmarked."""
    import textwrap

    obj = record.objects[0] if record.objects else None
    if obj is not None and obj.color:
        colour_right = answer_is_correct(QA(question, "", "color", obj.color), answer)
        shape_right = stated_answer("shape", answer) in ("", obj.category)  # '' = the answer names no shape
        verdict = "RIGHT" if colour_right and shape_right else "colour RIGHT, shape WRONG" if colour_right else "WRONG"
        answer = f"{answer}  → {verdict} (truth: {obj.color} {obj.category})"
    return textwrap.fill(f"Q: {question}  A: {answer}", width)


def attention_figure(model, processor, data_dir: Path, out: Path, n_scenes: int = 3, split: str = "test",
                     template: str = "vicuna_v1") -> Path:
    """Heatmaps of answer → patch attention (mean, rollout) and the vision tower's CLS attention, per scene."""
    # a fixed rule, not a pick: the busiest held-out scenes, each asked about its first object
    records = sorted(load_split(data_dir, split), key=lambda r: -len(r.objects))[:n_scenes]
    fig, axes = plt.subplots(len(records), 3, figsize=(10, 3.6 * len(records)), squeeze=False)
    for row, record in zip(axes, records):
        pixels = pixels_for(processor, [image_path(data_dir, record)])
        z = model.image_features(pixels)[0]
        question = probe_question(record)
        result = answer_attention(model, z, question, template=template)
        image = plt.imread(image_path(data_dir, record))
        draw_heatmap(row[0], image, aggregate(result, "mean").mean(0),
                     f"LM, mean over layers/heads\n{answer_verdict(record, question, result['text'])}")
        draw_heatmap(row[1], image, aggregate(result, "rollout").mean(0), "LM, attention rollout")
        grid_cls = vision_cls_attention(model.vision, pixels)[0]
        draw_heatmap(row[2], image, grid_cls, "vision tower: CLS → patches")
    return _save(fig, out / "attention.png")


def grounding_ratio(model, processor, data_dir: Path, n_scenes: int = 60) -> dict:
    """Answer tokens that name an object's colour: attention on that object's patch ÷ uniform share (mean)."""
    ratios = []
    for record in [r for r in load_split(data_dir, "test") if len(r.objects) >= 2][:n_scenes]:
        obj = record.objects[0]
        z = model.image_features(pixels_for(processor, [image_path(data_dir, record)]))[0]
        result = answer_attention(model, z, f"What color is the shape at the {position(obj, record)}?")
        weights = aggregate(result, "mean")  # (A, N)
        for k, token in enumerate(result["tokens"]):
            if token.strip() == obj.color:
                ratios.append(object_attention_ratio(weights[k], [object_patch(record, obj)]))
    return {"mean_ratio": sum(ratios) / len(ratios) if ratios else None, "n_tokens": len(ratios)}


def colour_token_shares(model, processor, data_dir: Path, records) -> torch.Tensor:
    """For every answer token that names the asked object's colour: its patch's share of the image attention × N,
    per layer and head — (n_tokens, L, H); 1.0 = a uniform spread over the N patches."""
    shares = []
    for record in records:
        obj = record.objects[0]
        z = model.image_features(pixels_for(processor, [image_path(data_dir, record)]))[0]
        result = answer_attention(model, z, f"What color is the shape at the {position(obj, record)}?")
        for k, token in enumerate(result["tokens"]):
            if token.strip() == obj.color:
                attn = result["attn"][:, :, k]  # (L, H, N)
                share = attn[..., object_patch(record, obj)] / attn.sum(-1).clamp_min(1e-12)
                shares.append(share * attn.shape[-1])
    return torch.stack(shares) if shares else torch.empty(0)


def grounding_by_head(model, processor, data_dir: Path, n_select: int = 60, n_test: int = 100) -> dict:
    """Which heads look at the object they name? Pick the head with the highest focus on one set of held-out scenes
    and report its focus on *other* scenes, so the selection cannot flatter the number."""
    scenes = [r for r in load_split(data_dir, "test") if len(r.objects) >= 2]
    select = colour_token_shares(model, processor, data_dir, scenes[:n_select])
    test = colour_token_shares(model, processor, data_dir, scenes[n_select:n_select + n_test])
    if not len(select) or not len(test):
        return {"best_head": None, "selection_ratio": None, "heldout_ratio": None, "mean_heads_heldout": None}
    per_head = select.mean(0)  # (L, H)
    layer, head = divmod(int(per_head.argmax()), per_head.shape[1])
    return {"per_head_selection": [[round(v, 3) for v in row] for row in per_head.tolist()],
            "best_head": [layer, head], "selection_ratio": round(per_head[layer, head].item(), 3),
            "heldout_ratio": round(test.mean(0)[layer, head].item(), 3),
            "mean_heads_heldout": round(test.mean().item(), 3), "n_tokens": [len(select), len(test)]}


def plot_head_focus(by_head: dict):
    """Heatmap (layers × heads) of the focus ratios from ``grounding_by_head``; returns the figure."""
    ratios = torch.tensor(by_head["per_head_selection"])  # (L, H)
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    im = ax.imshow(ratios, cmap="viridis")
    ax.set_xlabel("head"), ax.set_ylabel("LM layer")
    # layers and heads counted from 1, as everywhere else in the walkthrough (hidden_states[i] is after layer i)
    ax.set_xticks(range(ratios.shape[1]), [str(h + 1) for h in range(ratios.shape[1])])
    ax.set_yticks(range(ratios.shape[0]), [str(n + 1) for n in range(ratios.shape[0])])
    ax.set_title("focus on the named object, per head")
    fig.colorbar(im, ax=ax, label="× uniform share")
    return fig


def heads_figure(by_head: dict, out: Path) -> Path:
    return _save(plot_head_focus(by_head), out / "attention_heads.png")


def nearest_word_rate(model, processor, data_dir: Path, n_scenes: int = 100) -> dict:
    """How often an object patch's nearest colour/shape word (cosine) names its true colour or shape."""
    hits = total = 0
    for record in load_split(data_dir, "test")[:n_scenes]:
        z = model.image_features(pixels_for(processor, [image_path(data_dir, record)]))[0]
        words = nearest_words(model, z, k=1, vocabulary=list(COLORS) + list(SHAPES))
        for obj in record.objects:
            guess = words[object_patch(record, obj)][0]
            hits += guess in (obj.color, obj.category)
            total += 1
    return {"rate": hits / total if total else None, "n_objects": total}


def nearest_cell_word_rate(model, processor, data_dir: Path, n_scenes: int = 100) -> dict | None:
    """Of the 657 cell words the stand-in LM reads scenes in ("<top-left:large-red-circle>", ``stage0.vocab``), is
    the one nearest (cosine) to an object's projected patch its own word, or does it at least name what stands
    there, or the cell? None for an LM without cell words (a hub LM)."""
    from ..stage0.vocab import cell_word, cell_words, what_word
    vocabulary = cell_words(where=True)
    if vocabulary[0] not in model.tokenizer.get_added_vocab():
        return None
    records = load_split(data_dir, "test")[:n_scenes]
    z = model.image_features(pixels_for(processor, [image_path(data_dir, r) for r in records]))  # (B, N, Dv)
    nearest = nearest_words(model, z.flatten(0, 1), k=1, vocabulary=vocabulary)  # B·N rows, one word each
    hits = {"word": 0, "what": 0, "cell": 0}
    total = 0
    for b, record in enumerate(records):
        for obj in record.objects:
            cell = object_patch(record, obj)
            guess = nearest[b * z.shape[1] + cell][0]  # "<top-left:large-red-circle>"
            truth = cell_word(what_word(obj.size, obj.color, obj.category), cell, where=True)
            hits["word"] += guess == truth
            hits["what"] += guess.split(":")[1] == truth.split(":")[1]
            hits["cell"] += guess.split(":")[0] == truth.split(":")[0]
            total += 1
    return {**{k: v / total for k, v in hits.items()}, "n_objects": total} if total else None


def nearest_word_figure(model, processor, data_dir: Path, out: Path) -> Path:
    """The busiest held-out scene, each patch labelled with the two colour/shape words nearest to its token."""
    record = max(load_split(data_dir, "test"), key=lambda r: len(r.objects))
    z = model.image_features(pixels_for(processor, [image_path(data_dir, record)]))[0]
    words = nearest_words(model, z, k=2, vocabulary=list(COLORS) + list(SHAPES))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    image = plt.imread(image_path(data_dir, record))
    ax.imshow(image)
    cell = image.shape[0] / GRID
    for n, ws in enumerate(words):
        r, c = divmod(n, GRID)
        ax.text((c + 0.5) * cell, (r + 0.85) * cell, " / ".join(ws), ha="center", fontsize=8,
                bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
    ax.set_title("after stage 1: the two colour/shape words\nnearest to each projected patch token", fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
    return _save(fig, out / "nearest_words.png")


def projector_figure(models: dict, processor, data_dir: Path, out: Path, split: str = "test") -> tuple[Path, dict]:
    """Modality gap before stage 1 / after stage 1 / after stage 2; PCA map; singular values; norms."""
    records = load_split(data_dir, split)[:32]
    pixels = pixels_for(processor, [image_path(data_dir, r) for r in records])
    stats = {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, model in models.items():
        z = model.image_features(pixels)
        stats[name] = modality_gap(model, z)
        for i, s in enumerate(projector_spectrum(model)):
            axes[2].semilogy(s.numpy(), label=f"{name}, layer {i + 1}")
    names = list(stats)
    axes[0].bar([n.replace(" ", "\n") for n in names], [stats[n]["mean_best_cosine"] for n in names])
    axes[0].set_ylabel("mean best cosine to a word"), axes[0].set_title("image tokens vs word embeddings")
    final = models[names[-1]]
    xy = pca_map(final, final.image_features(pixels))
    axes[1].scatter(*xy["words"].T, s=4, alpha=0.4, label="word embeddings")
    axes[1].scatter(*xy["image"].T, s=4, alpha=0.4, label=f"image tokens ({names[-1]})")
    axes[1].set_xlabel("PC 1"), axes[1].set_ylabel("PC 2"), axes[1].set_title("PCA of both"), axes[1].legend(fontsize=7)
    axes[2].set_xlabel("index"), axes[2].set_ylabel("singular value"), axes[2].set_title("spectrum of W")
    axes[2].legend(fontsize=7)
    return _save(fig, out / "projector.png"), stats


def make_figures(model_dir: str | Path, out_dir: str | Path) -> dict:
    """All figures for a quickstart run (``model_dir`` = its stage2 directory); returns the measured properties."""
    from ..model.build import build_model, load_model

    model_dir, out = Path(model_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = model_dir.parent
    model, processor, cfg = load_model(model_dir)
    data_dir = Path(cfg.data_dir)
    stage1, _, _ = load_model(run_dir / "stage1")
    untrained, _ = build_model(cfg)
    torch.manual_seed(0)
    if cfg.data_source != "shapes":  # COCO: its own split; no colours, and no one-object-per-patch layout, so the
        split = "test" if (data_dir / "annotations" / "captions_test.json").is_file() else cfg.data_split
        paths = [loss_curves(run_dir, out), attention_figure(model, processor, data_dir, out, split=split,
                                                             template=cfg.stage2_template)]
        path, gap = projector_figure({"before stage 1": untrained, "after stage 1": stage1, "after stage 2": model},
                                     processor, data_dir, out, split=split)
        skipped = "needs the embedded scenes (object colours, one object per patch cell)"
        measured = {"attention_focus": skipped, "attention_by_head": skipped, "nearest_word_after_stage1": skipped,
                    "nearest_word_after_stage2": skipped, "modality_gap": gap,
                    "figures": [str(p) for p in [*paths, path]]}  # grounding measures: shapes only
        (out / "measured.json").write_text(json.dumps(measured, indent=1))
        return measured
    paths = [loss_curves(run_dir, out), attention_figure(model, processor, data_dir, out),
             nearest_word_figure(stage1, processor, data_dir, out)]
    path, gap = projector_figure({"before stage 1": untrained, "after stage 1": stage1, "after stage 2": model},
                                 processor, data_dir, out)
    paths.append(path)
    by_head = grounding_by_head(model, processor, data_dir)
    if by_head["best_head"] is not None:
        paths.append(heads_figure(by_head, out))
    measured = {"attention_focus": grounding_ratio(model, processor, data_dir), "attention_by_head": by_head,
                "nearest_word_after_stage1": nearest_word_rate(stage1, processor, data_dir),
                "nearest_word_after_stage2": nearest_word_rate(model, processor, data_dir),
                "nearest_cell_word_after_stage1": nearest_cell_word_rate(stage1, processor, data_dir),
                "nearest_cell_word_after_stage2": nearest_cell_word_rate(model, processor, data_dir),
                "modality_gap": gap, "figures": [str(p) for p in paths]}
    (out / "measured.json").write_text(json.dumps(measured, indent=1))
    return measured
