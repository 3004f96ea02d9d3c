"""Where the answer looks: attention from generated answer tokens to the image patches (§5, visual grounding).

The LM's default sdpa attention never materialises the weights, so ``output_attentions=True`` returns nothing with
it. We switch the LM (and the vision tower) to transformers' *eager* attention only for this measurement and
switch back afterwards; training and generation keep the fast kernel.

Shapes: L layers, H heads, T tokens in prompt + answer, N image tokens, A answer tokens.
"""

from __future__ import annotations

import contextlib

import torch
from einops import rearrange, reduce

from ..conversation import IMAGE_TOKEN, get_template, prompt_ids, stop_token_ids


@contextlib.contextmanager
def eager_attention(*models):
    """Temporarily use eager attention so attention weights can be returned."""
    before = [m.config._attn_implementation for m in models]
    for m in models:
        m.set_attn_implementation("eager")
    try:
        yield
    finally:
        for m, impl in zip(models, before):
            m.set_attn_implementation(impl)


@torch.no_grad()
def answer_attention(model, image_features: torch.Tensor, question: str, *, template: str = "vicuna_v1",
                     max_new_tokens: int = 24) -> dict:
    """Generate an answer greedily, then read every layer's attention from each answer token to the patches.

    ``image_features``: Z_v of one image, (N, Dv). Returns ``attn`` (L, H, A, N), the answer token strings,
    and ``all_attn`` (L, H, T, T) for rollout.
    """
    tmpl = get_template(template, model.tokenizer)
    prompt = prompt_ids(f"{IMAGE_TOKEN}\n{question}", model.tokenizer, tmpl, image_tokens=model.num_image_tokens)[None]
    z = image_features[None]
    answer = model.generate(prompt, image_features=z, max_new_tokens=max_new_tokens,
                            eos_token_id=stop_token_ids(tmpl, model.tokenizer))[0]
    answer = answer[answer != model.tokenizer.pad_token_id]
    ids = torch.cat([prompt[0], answer])[None]  # (1, T)
    with eager_attention(model.lm):
        out = model.lm(inputs_embeds=model.embed(ids, z), output_attentions=True)
    all_attn = torch.stack([a[0] for a in out.attentions])  # (L, H, T, T)
    image_pos = (ids[0] == model.image_token_id).nonzero().squeeze(-1)  # (N,)
    # the token at position t is *predicted* from t - 1: the attention that produced answer token k is row P + k - 1
    rows = torch.arange(prompt.shape[1] - 1, ids.shape[1] - 1)
    attn = all_attn[:, :, rows][:, :, :, image_pos]  # (L, H, A, N)
    tokens = [model.tokenizer.decode([t]) for t in answer.tolist()]
    return {"attn": attn, "tokens": tokens, "all_attn": all_attn, "image_positions": image_pos, "rows": rows,
            "text": model.tokenizer.decode(answer, skip_special_tokens=True)}


def aggregate(result: dict, how: str = "mean") -> torch.Tensor:
    """Per answer token, one weight per patch: (A, N). ``mean`` / ``max`` over layers and heads, or ``rollout``."""
    attn = result["attn"]
    if how in ("mean", "max"):
        return reduce(attn, "layer head answer patch -> answer patch", how)
    if how == "rollout":  # Abnar & Zuidema (2020): propagate attention through the residual stream, layer by layer
        a = reduce(result["all_attn"], "layer head t s -> layer t s", "mean")
        eye = torch.eye(a.shape[-1])
        joint = eye
        for layer in a:
            layer = 0.5 * layer + 0.5 * eye
            joint = (layer / layer.sum(-1, keepdim=True)) @ joint
        return joint[result["rows"]][:, result["image_positions"]]
    raise ValueError(f"unknown aggregation {how!r}; expected mean, max or rollout")


@torch.no_grad()
def attention_by_cell(result: dict, record, token: int, how: str = "mean") -> list[tuple[int, float, str]]:
    """Where answer token ``token`` looked, for a scene of the tiny preset (one patch per 3×3 cell): (cell, share of
    its image attention, what stands in that cell) for the 9 cells, most attended first."""
    from ..data.grid import cell_of_box

    weights = aggregate(result, how)[token]                          # (N,) over the image tokens
    share = weights / weights.sum()
    contents = {cell_of_box(o.bbox, record.width, record.height): f"{o.attributes.get('size', '')} {o.color} "
                f"{o.category}".strip() for o in record.objects}
    return [(cell, float(share[cell]), contents.get(cell, "empty")) for cell in share.argsort(descending=True).tolist()]


def vision_cls_attention(vision, pixel_values: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """The vision tower's own CLS → patch attention at ``layer``, averaged over heads: (B, N)."""
    with eager_attention(vision):
        out = vision(pixel_values=pixel_values, output_attentions=True)
    cls_to_patches = out.attentions[layer][:, :, 0, 1:]  # (B, H, N): row 0 is CLS, columns 1: the patches
    return reduce(cls_to_patches, "b head patch -> b patch", "mean")


def object_attention_ratio(weights: torch.Tensor, patches: list[int]) -> float:
    """Attention mass on an object's patches divided by what a uniform spread would give them (1 = no focus)."""
    share = weights[patches].sum() / weights.sum()
    return float(share / (len(patches) / weights.numel()))


def draw_heatmap(ax, image, weights: torch.Tensor, title: str = "") -> None:
    """Patch weights (N,) as a translucent grid over the image, with a colour bar."""
    import numpy as np

    grid = int(round(weights.numel() ** 0.5))
    ax.imshow(image)
    h, w = np.asarray(image).shape[:2]
    im = ax.imshow(rearrange(weights, "(row col) -> row col", row=grid).float().numpy(), cmap="inferno", alpha=0.55,
                   extent=(0, w, h, 0), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention")
