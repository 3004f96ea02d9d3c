"""The backbones the presets name, as configs — and random-weight stand-ins laid out like their hub checkpoints.

No weights can be downloaded here, so two things stand in for the hub:

- ``KNOWN`` holds the published configs of the checkpoints the ``small`` and ``paper`` presets name (copied from
  their ``config.json``), so ``minillava plan`` can count parameters and memory without a download. A local
  directory, or a name already in the Hugging Face cache, is read with ``AutoConfig`` instead.
- ``write_vision_standin`` / ``write_lm_standin`` save a checkpoint directory with the real architecture and
  conventions (CLIP's image processor; a Llama or Qwen2 LM with tied embeddings and a ChatML tokenizer and chat
  template) but, when asked, fewer/narrower layers and random weights. Tests and ``benchmarks/gpu.py`` load them
  through exactly the code path a hub name takes.
"""

from __future__ import annotations

from pathlib import Path

KNOWN: dict[str, dict] = {
    "openai/clip-vit-base-patch16": dict(model_type="clip_vision_model", hidden_size=768, intermediate_size=3072,
                                         num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16,
                                         projection_dim=512),
    "openai/clip-vit-large-patch14": dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                                          num_hidden_layers=24, num_attention_heads=16, image_size=224, patch_size=14,
                                          projection_dim=768),
    "openai/clip-vit-large-patch14-336": dict(model_type="clip_vision_model", hidden_size=1024,
                                              intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                              image_size=336, patch_size=14, projection_dim=768),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(model_type="llama", vocab_size=49152, hidden_size=576,
                                                intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                                num_key_value_heads=3, max_position_embeddings=8192,
                                                rope_theta=100000.0, tie_word_embeddings=True, chatml="smollm2"),
    "HuggingFaceTB/SmolLM2-360M-Instruct": dict(model_type="llama", vocab_size=49152, hidden_size=960,
                                                intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                                                num_key_value_heads=5, max_position_embeddings=8192,
                                                rope_theta=100000.0, tie_word_embeddings=True, chatml="smollm2"),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                       max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
                                       chatml="qwen2"),
    "lmsys/vicuna-7b-v1.5": dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                 max_position_embeddings=4096, tie_word_embeddings=False),
}

# The two ChatML conventions of the small preset's LMs (their tokenizer_config.json): SmolLM2 names <|im_start|>
# as BOS and pads with <|im_end|>; Qwen2.5 has no BOS at all and pads with <|endoftext|>. Both chat templates
# write a default system prompt when the conversation has none.
CHATML = {
    "smollm2": dict(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>",
                    chat_template=(
                        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                        "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                        "{{ '<|im_start|>assistant\n' }}{% endif %}")),
    "qwen2": dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                  chat_template=(
                      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + "
                      "'<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
                      "You are a helpful assistant.<|im_end|>\n' }}{%- endif %}{%- for message in messages %}"
                      "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or "
                      "message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\n' + message.content + "
                      "'<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}"
                      "{{- '<|im_start|>assistant\n' }}{%- endif %}")),
}


def known_config(name: str):
    """The transformers config of a KNOWN backbone (vision: ``CLIPVisionConfig``; LM: its ``model_type``)."""
    from transformers import AutoConfig, CLIPVisionConfig

    spec = {k: v for k, v in KNOWN[name].items() if k not in ("model_type", "chatml")}
    kind = KNOWN[name]["model_type"]
    return CLIPVisionConfig(**spec) if kind == "clip_vision_model" else AutoConfig.for_model(kind, **spec)


def chatml_tokenizer(style: str, texts: list[str], vocab_size: int = 800):
    """A byte-level BPE tokenizer with the ChatML special tokens and chat template of ``style`` (smollm2 | qwen2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    conv = CHATML[style]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    named = {k: v for k, v in conv.items() if k.endswith("_token") and v is not None}
    out = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=8192, **named)
    out.chat_template = conv["chat_template"]
    return out


def write_vision_standin(out: str | Path, name: str = "openai/clip-vit-base-patch16", seed: int = 0, **shrink) -> Path:
    """A CLIP checkpoint directory (``CLIPModel`` + CLIP's image processor, as on the hub) with ``name``'s vision
    geometry (image size, patch size: so N image tokens) and random weights; ``shrink`` overrides e.g. the width."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    vision = {k: v for k, v in KNOWN[name].items() if k != "model_type"} | shrink
    text = dict(hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
                num_hidden_layers=min(vision["num_hidden_layers"], 2), num_attention_heads=vision["num_attention_heads"],
                vocab_size=1000, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=vision["projection_dim"]))
    size = vision["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def write_lm_standin(out: str | Path, name: str, texts: list[str], seed: int = 0, **shrink) -> Path:
    """A causal-LM checkpoint directory with ``name``'s architecture, tying and ChatML tokenizer, random weights;
    ``shrink`` overrides config fields (e.g. ``num_hidden_layers=2``, or ``vocab_size`` to fit the tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = {k: v for k, v in KNOWN[name].items() if k not in ("model_type", "chatml")} | shrink
    tokenizer = chatml_tokenizer(KNOWN[name]["chatml"], texts)
    spec["vocab_size"] = max(spec["vocab_size"], len(tokenizer))
    ids = {f"{k}_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, k)) if getattr(tokenizer, k) else None
           for k in ("bos_token", "eos_token", "pad_token")}
    config = AutoConfig.for_model(KNOWN[name]["model_type"], **spec, **ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
