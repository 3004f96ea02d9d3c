"""What the projection W learns: visual tokens seen through the LM's vocabulary (§4.2, stage 1).

Stage 1 turns W into "a compatible visual tokenizer for the frozen LLM" (§4.2). Four ways to look at it:
(a) each projected patch token's nearest word embeddings, and the LM head's top tokens at that position;
(b) cosine similarity between image tokens and word embeddings (the modality gap);
(c) a 2-D PCA map of image tokens and word embeddings;
(d) the projector's singular values and output norms against word-embedding norms;
(e) how much of the object tokens' variance each attribute explains, before W (Z_v) and after it (H_v).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


@torch.no_grad()
def nearest_words(model, image_features: torch.Tensor, k: int = 3, vocabulary: list[str] | None = None) -> list[list[str]]:
    """For each of the N projected tokens of one image (N, Dv): the k words whose embeddings are closest (cosine).

    ``vocabulary`` restricts the candidates to those words (each one token: colour and shape names, cell words).
    """
    h = model.project(image_features)  # (N, D)
    table = model.lm.get_input_embeddings().weight  # (V, D)
    ids = torch.arange(table.shape[0])
    if vocabulary is not None:
        ids = torch.tensor([single_token_id(model.tokenizer, w) for w in vocabulary])
    sims = F.normalize(h, dim=-1) @ F.normalize(table[ids], dim=-1).T  # (N, |ids|)
    top = sims.topk(min(k, len(ids)), dim=-1).indices
    return [[model.tokenizer.decode([int(ids[j])]).strip() for j in row] for row in top]


def single_token_id(tokenizer, word: str) -> int:
    """The id of ``word``: a word added whole to the vocabulary (a cell word, "<top-left:large-red-circle>") as it
    is, any other as it appears after a space (" red"), which must then be a single token."""
    if word in (added := tokenizer.get_added_vocab()):
        return added[word]
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{word!r} is {len(ids)} tokens for this tokenizer; pick single-token words")
    return ids[0]


@torch.no_grad()
def lm_head_words(model, image_features: torch.Tensor, k: int = 3) -> list[list[str]]:
    """What the LM would say next at each image position: top-k tokens of the LM head there, (N × k)."""
    from ..conversation import IMAGE_TOKEN, get_template, prompt_ids

    ids = prompt_ids(IMAGE_TOKEN + "\n", model.tokenizer, get_template("vicuna_v1"), image_tokens=model.num_image_tokens)[None]
    logits = model.logits(ids, image_features=image_features[None])[0]  # (T, V)
    rows = (ids[0] == model.image_token_id).nonzero().squeeze(-1)
    top = logits[rows].topk(k, dim=-1).indices
    return [[model.tokenizer.decode([int(t)]).strip() for t in row] for row in top]


@torch.no_grad()
def modality_gap(model, image_features: torch.Tensor) -> dict[str, float]:
    """Cosine statistics of image tokens (B·N, D) against word embeddings, and their norms."""
    h = rearrange(model.project(image_features), "b n d -> (b n) d")  # every image token of every image
    words = model.lm.get_input_embeddings().weight
    cos = F.normalize(h, dim=-1) @ F.normalize(words, dim=-1).T
    centre = F.cosine_similarity(h.mean(0), words.mean(0), dim=0)
    return {"mean_best_cosine": cos.max(-1).values.mean().item(), "mean_cosine": cos.mean().item(),
            "centroid_cosine": centre.item(), "image_token_norm": h.norm(dim=-1).mean().item(),
            "word_norm": words.norm(dim=-1).mean().item()}


@torch.no_grad()
def pca_map(model, image_features: torch.Tensor, n_words: int | None = None) -> dict[str, torch.Tensor]:
    """Project image tokens and word embeddings onto the first two principal components of both together."""
    h = rearrange(model.project(image_features), "b n d -> (b n) d")  # every image token of every image
    words = model.lm.get_input_embeddings().weight[:n_words]
    both = torch.cat([h, words]).float()
    centred = both - both.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    xy = centred @ v[:, :2]
    return {"image": xy[:len(h)], "words": xy[len(h):]}


@torch.no_grad()
def projector_spectrum(model) -> list[torch.Tensor]:
    """Singular values of each linear layer of W (one for linear, two for mlp2x_gelu)."""
    layers = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
    return [torch.linalg.svdvals(layer.weight.float()) for layer in layers]


def explained_share(x: torch.Tensor, labels: list) -> float:
    """Between-class over total variance of rows x (n, D) grouped by ``labels``: 1 = the label is all that varies."""
    x = x.float() - x.float().mean(0)
    total = x.pow(2).sum(1).mean()
    between = sum((idx := torch.tensor([lab == value for lab in labels])).float().mean() * x[idx].mean(0).pow(2).sum()
                  for value in set(labels))
    return float(between / total)


@torch.no_grad()
def attribute_variance(model, image_features: torch.Tensor, objects: list[tuple[int, int, dict]]) -> dict:
    """For the token of each object: the share of variance that its colour, shape, size and cell explain, in
    Z_v (what CLIP gives) and in H_v = W · Z_v (what the LM reads).

    ``objects`` holds (image index, token index, {"color": ..., "shape": ..., "size": ..., "cell": ...}).
    W may keep an attribute linearly decodable yet shrink it to a sliver of the variance; the LM, which has to
    *learn* to read it, then meets it as a whisper beside the loud ones.
    """
    z = torch.stack([image_features[i, t] for i, t, _ in objects])  # (n_objects, Dv)
    h = model.project(z)                                             # (n_objects, D)
    out = {}
    for name, x in (("Z_v", z), ("H_v", h)):
        out[name] = {attr: round(explained_share(x, [o[attr] for _, _, o in objects]), 3)
                     for attr in ("color", "shape", "size", "cell")}
    return out
