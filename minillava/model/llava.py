"""§4.1 LLaVA: vision encoder g, projection W, language model f_φ — and the splice that joins them.

    Z_v = g(X_v)           (B, N, Dv)   frozen CLIP patch features, penultimate layer, no CLS
    H_v = W · Z_v          (B, N, D)    projected into the LM's word-embedding space  (eq. 1)
    X = [H_q ; H_v ; ...]  (B, T, D)    image tokens spliced where ``<image>`` stood in the instruction

The tokenised prompt already holds N copies of the ``<image>`` id (``conversation.tokenize_conversation``), so
the splice is a single masked assignment into the word embeddings; those positions are labelled -100.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from ..conversation import IMAGE_TOKEN
from .projector import build_projector
from .vision import encode_images


@functools.cache
def _cache_argument(decoder_class: type) -> str:
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


def cache_argument(decoder) -> str:
    """The decoder's name for its KV-cache argument: ``cache`` from transformers 5.25, ``past_key_values`` before
    (read once per decoder class, not on every training step)."""
    return _cache_argument(type(decoder))


def answer_loss(lm, embeds: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, shared_prefix: int = 0) -> tuple[torch.Tensor, int]:
    """Eq. 3 for any causal LM given its input embeddings (B, T, D): the sum of -log p over the labelled tokens
    (labels -100 elsewhere), and their count. Stage 0's chat LM trains with it too (its inputs are all words)."""
    if shared_prefix:
        if (labels[:, :shared_prefix + 1] != -100).any():
            raise ValueError(f"shared_prefix={shared_prefix}: the shared tokens (and the one after) must carry no loss")
        hidden = decode_rest(lm.get_decoder(), embeds, attention_mask, shared_prefix)  # (B, T - P, D)
        labels = labels[:, shared_prefix:]
    else:  # no KV cache in training (it would also switch off transformers' packed-sequence masking)
        hidden = lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
    targets = labels[:, 1:]                      # token t is predicted from position t - 1
    keep = targets != -100                       # (B, T-1)
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])  # (M, V)
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return loss, int(keep.sum())


def decode_rest(decoder, embeds: torch.Tensor, attention_mask: torch.Tensor | None, prefix: int) -> torch.Tensor:
    """The decoder's hidden states (B, T - P, D) after the P leading positions that every row shares.

    Row 0's prefix (1, P, D) runs once and leaves its keys and values in a KV cache; the cache is repeated B
    times and the remaining (B, T - P) positions attend to it. Causal attention means the prefix never sees
    what follows it, so its keys and values are the same in every row and the result equals the plain batch's
    (tested to fp32 rounding). Gradients flow through the cache: the backward of the repeat sums all B rows'
    gradients into the one prefix, as the plain batch would into B copies of it.
    """
    batch, length, _ = embeds.shape
    head = decoder(inputs_embeds=embeds[:1, :prefix], use_cache=True)
    cache = head.cache if hasattr(head, "cache") else head.past_key_values  # transformers ≥ 5.25 : before
    cache.batch_repeat_interleave(batch)  # (1, H, P, d) → (B, H, P, d) in every layer
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
    positions = torch.arange(prefix, length, device=embeds.device).expand(batch, -1)  # (B, T - P)
    return decoder(inputs_embeds=embeds[:, prefix:], attention_mask=attention_mask, position_ids=positions,
                   use_cache=True, **{cache_argument(decoder): cache}).last_hidden_state


class MiniLlava(nn.Module):
    """g (frozen CLIP vision tower) → W (projector) → f_φ (any transformers causal LM)."""

    def __init__(self, vision: nn.Module, lm: nn.Module, tokenizer, projector: str = "mlp2x_gelu",
                 select_layer: int = -2, keep_cls: bool = False):
        super().__init__()
        self.vision, self.lm, self.tokenizer = vision, lm, tokenizer
        self.select_layer, self.keep_cls, self.projector_type = select_layer, keep_cls, projector
        self.projector = build_projector(projector, vision.config.hidden_size, lm.config.hidden_size)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        grid = vision.config.image_size // vision.config.patch_size
        self.num_image_tokens = grid * grid + (1 if keep_cls else 0)  # N

    # --- §4.1 -----------------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Z_v = g(X_v): (B, 3, H, W) → (B, N, Dv). No gradient: the encoder is always frozen."""
        return encode_images(self.vision, pixel_values, self.select_layer, self.keep_cls)

    def project(self, image_features: torch.Tensor) -> torch.Tensor:
        """H_v = W · Z_v: (B, N, Dv) → (B, N, D)."""
        return self.projector(image_features.to(self.projector_dtype))

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Word embeddings (B, T, D) with H_v written over the N ``<image>`` positions of each row."""
        is_image = input_ids == self.image_token_id  # (B, T)
        # the <image> id has an embedding row too; look it up, then overwrite those rows
        embeds = self.lm.get_input_embeddings()(input_ids)
        if image_features is None:
            if is_image.any():
                raise ValueError("the prompt has <image> tokens but no image was given")
            return embeds
        projected = self.project(image_features)  # (B_img, N, D)
        if int(is_image.sum()) != projected.shape[0] * projected.shape[1]:
            raise ValueError(f"{int(is_image.sum())} <image> positions in the batch but {projected.shape[0]} images "
                             f"× {projected.shape[1]} tokens; expected N = {self.num_image_tokens} per image")
        embeds = embeds.masked_scatter(is_image.unsqueeze(-1), projected.to(embeds.dtype))
        return embeds

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V) for every position. Give pixels, or cached Z_v features."""
        if image_features is None and pixel_values is not None:
            image_features = self.image_features(pixel_values)
        return self.lm(inputs_embeds=self.embed(input_ids, image_features), attention_mask=attention_mask).logits

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    image_features: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                    position_ids: torch.Tensor | None = None, shared_prefix: int = 0) -> tuple[torch.Tensor, int]:
        """Eq. 3 as a *sum* of -log p over answer tokens, and their count.

        Summing (not averaging) lets the trainer divide by the token count of the whole global batch, so
        gradient accumulation and several processes give the same update as one big batch. The LM head is
        applied only at positions that predict an answer token: (M, D) @ (D, V) instead of (B, T, D) @ (D, V).
        Packed rows (``InstructDataset.collate_packed``) pass ``position_ids`` that restart per sample and no
        ``attention_mask``; transformers then confines attention to each sample.
        ``shared_prefix = P`` (``InstructDataset.collate``): the first P tokens are the same in every row and carry
        no loss (BOS, system prompt, ``USER:``), so they go through the LM once, not B times (``decode_rest``).
        The sum itself is ``answer_loss``.
        """
        if image_features is None and pixel_values is not None:
            image_features = self.image_features(pixel_values)
        return answer_loss(self.lm, self.embed(input_ids, image_features), labels, attention_mask, position_ids,
                           shared_prefix)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None,
                 max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, eos_token_id: int | list[int] | None = None) -> torch.Tensor:
        """New token ids (B, ≤ max_new_tokens); prompts are left-padded. KV cache and sampling from transformers.

        ``eos_token_id``: the stop token(s), by default the tokenizer's EOS (``conversation.stop_token_ids``
        adds the template's own turn end, e.g. ChatML's ``<|im_end|>`` where EOS is ``<|endoftext|>``)."""
        if image_features is None and pixel_values is not None:
            image_features = self.image_features(pixel_values)
        embeds = self.embed(input_ids, image_features)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = dict(do_sample=do_sample, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
        if eos_token_id is None:
            eos_token_id = self.tokenizer.eos_token_id
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                eos_token_id=eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                                **kwargs)

    def lm_is_tied(self) -> bool:
        """True when the LM's output head and input embeddings are one tensor (``tie_word_embeddings``)."""
        head = self.lm.get_output_embeddings()
        return head is not None and head.weight is self.lm.get_input_embeddings().weight
