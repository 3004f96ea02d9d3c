"""The two pretrained parts LLaVA starts from: a CLIP vision encoder and a chat LM (§4.1).

- Hub names (``openai/clip-vit-large-patch14``, ``HuggingFaceTB/SmolLM2-135M-Instruct``, ``lmsys/vicuna-7b-v1.5``)
  or local directories load through transformers, exactly as released.
- ``tiny`` loads the embedded stand-ins shipped in ``minillava/assets/tiny`` — a tiny CLIP vision tower and a
  tiny chat LM with its own byte-level BPE tokenizer — made by the stage-0 recipe (``minillava.stage0``) because
  no pretrained weights can be assumed offline. They play the roles of CLIP and Vicuna, nothing more.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig,
                          PreTrainedTokenizerFast)

from ..conversation import IMAGE_TOKEN

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def tiny_vision_config(image_size: int = 96, patch_size: int = 32) -> CLIPVisionConfig:
    """96 px / 32 px patches = a 3×3 grid: one patch token per scene cell (fewer image tokens bind faster)."""
    return CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                            image_size=image_size, patch_size=patch_size, projection_dim=128)


def tiny_lm_config(vocab_size: int, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def train_tiny_tokenizer(texts: list[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on our corpus (tokenizers library): decodes back to the exact text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [SPECIAL_TOKENS["pad_token"], SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"],
                SPECIAL_TOKENS["unk_token"], IMAGE_TOKEN]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=[IMAGE_TOKEN],
                                   model_max_length=512, **SPECIAL_TOKENS)


def image_processor_class():
    """transformers 5 has a PIL-only CLIP processor; it needs no torchvision (4.x: the one class)."""
    import transformers
    if hasattr(transformers, "CLIPImageProcessorPil"):  # asking for CLIPImageProcessor itself warns in 5.x
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


def backbone_path(name: str, part: str) -> str:
    """Where to load ``part`` ("vision" or "lm") of backbone ``name`` from: the shipped folder for "tiny", else
    ``name`` itself (a hub id or a local folder)."""
    if name == "tiny":
        path = TINY_DIR / part
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: the shipped tiny {part} is missing; run `minillava train --stage 0`")
        return str(path)
    return name




def load_vision(name: str, *, image_size: int | None = None, dtype=torch.float32,
                trust_remote_code: bool = False) -> tuple[CLIPVisionModel, object]:
    """A frozen CLIP vision tower and its image processor (resize, centre-crop, normalise)."""
    path = backbone_path(name, "vision")
    vision = CLIPVisionModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    processor = image_processor_class().from_pretrained(path)
    if image_size is not None and image_size != vision.config.image_size:
        raise ValueError(f"vision tower {name!r} expects {vision.config.image_size} px images, not {image_size}")
    vision.requires_grad_(False)
    return vision.eval(), processor


def load_lm(name: str, *, dtype=torch.float32, trust_remote_code: bool = False):
    """A causal LM and its tokenizer, with ``<image>`` registered as a special token (embedding row added)."""
    path = backbone_path(name, "lm")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return register_image_token(lm, tokenizer)


def register_image_token(lm, tokenizer):
    """Add ``<image>`` as a special token (and a pad token if missing); grow the embedding table to match."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(len(tokenizer))
    return lm, tokenizer
