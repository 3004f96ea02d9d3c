"""Answering questions about images with a trained MiniLlava: batched, greedy or sampled, with a KV cache."""

from __future__ import annotations

from pathlib import Path

import torch

from .conversation import CHAT, IMAGE_TOKEN, for_tokenizer, get_template, prompt_ids, stop_token_ids
from .data.dataset import left_pad, load_image


@torch.no_grad()
def answer_batch(model, questions: list[str], *, image_features: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, template: str = "vicuna_v1", max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 history: list[list[tuple[str, str]]] | None = None) -> list[str]:
    """One answer per (image, question); the image placeholder is put first, as in training."""
    # only 'chat' needs the tokenizer; any other name is checked before the model is touched
    tmpl = get_template(template, model.tokenizer if template == CHAT else None)
    device = next(model.lm.parameters()).device
    prompts = []
    for i, question in enumerate(questions):
        turns = list(history[i]) if history else []
        if turns:  # the image belongs to the first human turn of the conversation
            turns[0] = (f"{IMAGE_TOKEN}\n{turns[0][0]}", turns[0][1])
        else:
            question = f"{IMAGE_TOKEN}\n{question}"
        prompts.append(prompt_ids(question, model.tokenizer, tmpl, image_tokens=model.num_image_tokens,
                                  history=turns))
    ids, mask = left_pad(prompts, model.tokenizer.pad_token_id)
    if pixel_values is not None:
        pixel_values = pixel_values.to(device, model.vision.dtype)
    if image_features is not None:
        image_features = image_features.to(device)
    out = model.generate(ids.to(device), mask.to(device), pixel_values=pixel_values, image_features=image_features,
                         max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                         eos_token_id=stop_token_ids(tmpl, model.tokenizer))
    texts = [model.tokenizer.decode(seq, skip_special_tokens=True) for seq in out]
    stop = for_tokenizer(tmpl, model.tokenizer).turn_end
    if stop.strip() and stop not in model.tokenizer.all_special_tokens:
        # a stop written as text (v0's "###") is no single token to stop on: the answer ends where it first appears
        texts = [text.split(stop)[0] for text in texts]
    elif stop == "\n":
        texts = [text.strip().split("\n")[0] for text in texts]  # plain: a caption is one line
    return [text.strip() for text in texts]


def pixels_for(processor, paths: list[str | Path]) -> torch.Tensor:
    """Load images (RGB, any mode) and run the CLIP processor: (B, 3, H, W)."""
    return processor(images=[load_image(Path(p)) for p in paths], return_tensors="pt")["pixel_values"]


def chat_once(model, processor, image: str | Path, question: str, **kwargs) -> str:
    return answer_batch(model, [question], pixel_values=pixels_for(processor, [image]), **kwargs)[0]
