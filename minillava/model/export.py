"""Export a MiniLlava to the transformers ``LlavaForConditionalGeneration`` format (the ``llava-hf`` layout).

The two models compute the same function — CLIP hidden states at ``select_layer`` (CLS dropped unless kept),
a two-layer GELU projector, and the LM reading word embeddings with H_v written over the N ``<image>``
positions — so the export is a config translation plus a weight copy:

    MiniLlava                          LlavaForConditionalGeneration (transformers 5.x)
    vision            (CLIPVisionModel) model.vision_tower
    projector.0 / projector.2          model.multi_modal_projector.linear_1 / linear_2
    lm.model          (decoder)         model.language_model
    lm.lm_head                          lm_head
    select_layer                        config.vision_feature_layer
    keep_cls False / True               config.vision_feature_select_strategy "default" / "full"

Every part is copied with a strict ``load_state_dict``, so no weight of the exported model is left random.
transformers' projector is always ``linear_1 → act → linear_2``; our single-``linear`` projector (original
LLaVA) has no exact counterpart (there is no identity activation to put between two linears), so it is refused.

``export_model`` also writes a ``LlavaProcessor`` (our CLIP image processor + tokenizer) that expands one
``<image>`` in the text into the N image tokens, adds BOS as ``conversation.prompt_ids`` does, and carries a
chat template that renders our conversation template (vicuna_v1 by default).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..conversation import CHAT, IMAGE_TOKEN, Template, for_tokenizer, get_template, stop_token_ids
from .llava import MiniLlava


def _check_exportable(model: MiniLlava) -> None:
    if model.projector_type != "mlp2x_gelu":
        raise ValueError(
            f"cannot export a {model.projector_type!r} projector: transformers' LlavaForConditionalGeneration "
            f"always uses two linear layers with an activation between them, so only the 'mlp2x_gelu' projector "
            f"(LLaVA-1.5) exports exactly; retrain with projector=mlp2x_gelu to export")
    proj = model.projector
    if not (isinstance(proj, torch.nn.Sequential) and len(proj) == 3 and isinstance(proj[1], torch.nn.GELU)
            and proj[1].approximate == "none"):
        raise ValueError(f"unexpected mlp2x_gelu projector structure: {proj}")
    if not isinstance(model.select_layer, int):
        raise ValueError(f"select_layer must be an int, got {model.select_layer!r}")


def llava_config(model: MiniLlava):
    """The ``LlavaConfig`` describing ``model``: its vision and LM configs plus how they are joined."""
    from transformers import LlavaConfig

    _check_exportable(model)
    text_config = copy.deepcopy(model.lm.config)
    text_config.vocab_size = model.lm.get_input_embeddings().weight.shape[0]  # after any resize for <image>
    return LlavaConfig(
        vision_config=copy.deepcopy(model.vision.config),
        text_config=text_config,
        image_token_index=model.image_token_id,
        image_seq_length=model.num_image_tokens,
        projector_hidden_act="gelu",           # nn.GELU() = exact erf GELU = ACT2FN["gelu"]
        vision_feature_select_strategy="full" if model.keep_cls else "default",
        vision_feature_layer=model.select_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(model.lm.config, "tie_word_embeddings", False)),
    )


def _load_strict(target: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"cannot copy the {what} into the Llava model: {err}") from err


@torch.no_grad()
def to_hf_llava(model: MiniLlava):
    """(LlavaForConditionalGeneration, LlavaConfig) with ``model``'s weights; same logits for the same inputs."""
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    from .lora import merged_copy
    model = merged_copy(model)  # a LoRA adapter still attached is folded into f_φ first (W₀ + (α/r)·BA)
    config = llava_config(model)
    dtype = next(model.lm.parameters()).dtype
    llava = LlavaForConditionalGeneration(config).to(dtype).eval()

    inner = llava.model
    if type(inner.vision_tower) is not type(model.vision):
        raise ValueError(f"transformers builds a {type(inner.vision_tower).__name__} from the vision config but the "
                         f"model's tower is a {type(model.vision).__name__}")
    _load_strict(inner.vision_tower, model.vision.state_dict(), "vision tower")
    proj = model.projector
    _load_strict(inner.multi_modal_projector,
                 {"linear_1.weight": proj[0].weight, "linear_1.bias": proj[0].bias,
                  "linear_2.weight": proj[2].weight, "linear_2.bias": proj[2].bias}, "projector")
    _load_strict(inner.language_model, model.lm.get_decoder().state_dict(), "language model")
    _load_strict(llava.lm_head, model.lm.get_output_embeddings().state_dict(), "LM head")

    covered = ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head.")
    left = [k for k in llava.state_dict() if not k.startswith(covered)]
    if left:  # a future transformers version with parts we do not know how to fill
        raise ValueError(f"Llava model has weights the export does not fill: {left[:5]}")

    tok = model.tokenizer
    gen = copy.deepcopy(model.lm.generation_config) if model.lm.generation_config is not None else GenerationConfig()
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    llava.generation_config = gen
    return llava, config


def chat_template(template: Template | str, tokenizer) -> str | None:
    """A Jinja chat template rendering our conversation ``template`` (None for ``plain``, which has no chat).

    Messages are HF-style: ``{"role": "user"|"assistant"|"system", "content": str | [{"type": "image"},
    {"type": "text", "text": ...}]}``. Images in a user turn render as ``<image>\\n`` before its text, as
    ``inference.answer_batch`` puts them; a system message replaces the template's system prompt (with ``chat``,
    the LM's own format, the system block is the one its chat template writes, and a system message is refused).
    """
    tmpl = get_template(template, tokenizer) if isinstance(template, str) else template
    if not tmpl.keep_question:
        return None
    tmpl = for_tokenizer(tmpl, tokenizer)
    lit = json.dumps  # JSON string literals are valid Jinja string literals
    base_system = tmpl.system.rstrip(" \n#")
    system_sep = tmpl.system[len(base_system):]  # " " (vicuna_v1) or "###" (v0): kept after a custom system message
    system = "{%- set system = " + lit(base_system) + " -%}"
    if tmpl.name == CHAT:  # the system block is already wrapped in the LM's own markup: no other system prompt
        system_sep = ""
        system = ("{%- set system = " + lit(tmpl.system) + " -%}{%- if messages and messages[0]['role'] == 'system' "
                  "-%}{{- raise_exception('the LM chat format keeps its own system prompt') -}}{%- endif -%}")
    answer_lead = " " if tmpl.answer_space else ""
    return system + (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
        "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
        "| map(attribute='text') | join('') -%}{%- endif -%}"
        "{%- set messages = messages[1:] -%}"
        "{%- endif -%}"
        "{%- if system -%}{{- system + " + lit(system_sep) + " -}}{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- set images = 0 -%}"
        "{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
        "| map(attribute='text') | join('') -%}"
        "{%- set images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
        "{%- endif -%}"
        "{%- if message['role'] == 'user' -%}"
        "{%- if not loop.first -%}{{- " + lit(tmpl.turn_sep) + " -}}{%- endif -%}"
        "{{- " + lit(tmpl.user_prefix) + " + " + lit(IMAGE_TOKEN + "\n") + " * images + text -}}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{- " + lit(tmpl.assistant_prefix) + " + " + lit(answer_lead) + " + (text | trim) + " + lit(tmpl.turn_end) + " -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + lit(tmpl.assistant_prefix) + " -}}{%- endif -%}"
    )


def hf_tokenizer(tokenizer, add_bos: bool = True):
    """A copy of ``tokenizer`` that prepends BOS by itself where ``conversation.prompt_ids`` does, and pads left.

    ``add_bos=False`` for the ``chat`` template: the LM's chat template writes its own start, as in training."""
    tok = copy.deepcopy(tokenizer)
    # prompts end where generation starts; transformers 5 saves only attributes named in init_kwargs
    tok.padding_side = tok.init_kwargs["padding_side"] = "left"
    if add_bos and tok.bos_token_id is not None:
        ids = tok("a")["input_ids"]
        if not ids or ids[0] != tok.bos_token_id:
            # transformers 5: rebuilds the backend post-processor, which tokenizer.json keeps (add_bos_token
            # itself is not written to tokenizer_config.json)
            tok.add_bos_token = True
    return tok


def llava_processor(model: MiniLlava, image_processor, template: str | None = "vicuna_v1"):
    """A ``LlavaProcessor`` whose text expansion gives exactly ``model.num_image_tokens`` per ``<image>``."""
    from transformers import LlavaProcessor

    tmpl = get_template(template, model.tokenizer) if template else None
    tok = hf_tokenizer(model.tokenizer, add_bos=tmpl.bos if tmpl else True)
    proc = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=model.vision.config.patch_size,
        vision_feature_select_strategy="full" if model.keep_cls else "default",
        num_additional_image_tokens=1,  # CLIP's CLS; "default" removes it again
        chat_template=chat_template(tmpl, tok) if tmpl else None, image_token=IMAGE_TOKEN)
    return proc


def export_model(model_dir: str | Path, out_dir: str | Path, template: str | None = None) -> Path:
    """Convert a minillava model directory into a transformers Llava directory (model + processor).

    ``out_dir`` then loads with ``LlavaForConditionalGeneration.from_pretrained`` and
    ``AutoProcessor.from_pretrained``. ``template`` (default: the config's ``stage2_template``) picks the chat
    template written with the processor.
    """
    from .build import load_model

    model, image_processor, cfg = load_model(model_dir)
    llava, _ = to_hf_llava(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = template or getattr(cfg, "stage2_template", "vicuna_v1")
    if template != "plain":  # stop where the template ends an answer (ChatML: <|im_end|>), not only at EOS
        llava.generation_config.eos_token_id = stop_token_ids(get_template(template, model.tokenizer), model.tokenizer)
    llava.save_pretrained(out_dir)  # transformers 5: always safetensors; a tied head is written once
    llava_processor(model, image_processor, template).save_pretrained(out_dir)
    return out_dir
