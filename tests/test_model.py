"""§4.1: g → W → splice. Shapes, layer selection, the masked splice, and hub-style loading from local folders."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from minillava.conversation import get_template, prompt_ids
from minillava.model.backbones import load_lm
from minillava.model.projector import build_projector
from minillava.model.vision import select_features


def test_shapes_through_g_w_and_the_splice(random_model):
    m = random_model
    pixels = torch.randn(2, 3, 96, 96)
    z = m.image_features(pixels)
    assert z.shape == (2, 9, 128)  # 96 px / 32 px patches = 3×3, CLS dropped, Dv = 128
    h = m.project(z)
    assert h.shape == (2, 9, m.lm.config.hidden_size)
    ids = prompt_ids("<image>\nWhat is at the center?", m.tokenizer, get_template("vicuna_v1"), image_tokens=9)
    ids = torch.stack([ids, ids])
    embeds = m.embed(ids, z)
    is_image = ids == m.image_token_id
    assert torch.equal(embeds[is_image].view(2, 9, -1), h)  # image positions hold exactly H_v, in patch order
    words = m.lm.get_input_embeddings()(ids)
    assert torch.equal(embeds[~is_image], words[~is_image])  # every other position is untouched


def test_penultimate_layer_and_cls_selection(random_model):
    out = random_model.vision(pixel_values=torch.randn(1, 3, 96, 96), output_hidden_states=True)
    assert len(out.hidden_states) == 5  # embeddings + 4 layers
    assert torch.equal(select_features(out.hidden_states), out.hidden_states[-2][:, 1:])
    assert select_features(out.hidden_states, -1, keep_cls=True).shape == (1, 10, 128)


def test_wrong_number_of_image_tokens_is_an_error(random_model):
    ids = prompt_ids("<image>\nQ?", random_model.tokenizer, get_template("vicuna_v1"), image_tokens=4)
    with pytest.raises(ValueError, match="<image> positions"):
        random_model.embed(ids[None], torch.randn(1, 9, 128))
    with pytest.raises(ValueError, match="no image was given"):
        random_model.embed(ids[None], None)


@pytest.mark.parametrize("kind,params", [("linear", 128 * 192 + 192), ("mlp2x_gelu", 128 * 192 + 192 + 192 * 192 + 192)])
def test_projectors(kind, params):
    w = build_projector(kind, 128, 192)
    assert sum(p.numel() for p in w.parameters()) == params
    assert w(torch.randn(2, 9, 128)).shape == (2, 9, 192)
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("qformer", 128, 192)


def test_hub_style_lm_without_image_token_gets_one(tmp_path, random_model):
    """A released LM (SmolLM2, Vicuna) has no <image>: loading adds it and grows the embedding matrix by one row."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2))
    lm.save_pretrained(tmp_path / "lm")
    hf_tok.save_pretrained(tmp_path / "lm")
    loaded, tokenizer = load_lm(str(tmp_path / "lm"))
    assert "<image>" in tokenizer.get_vocab() and tokenizer.pad_token == "</s>"
    assert loaded.get_input_embeddings().weight.shape[0] == len(tokenizer) == 6
    assert AutoTokenizer.from_pretrained(tmp_path / "lm").convert_tokens_to_ids("hello") == 3


def test_missing_tiny_assets_name_the_fix(monkeypatch, tmp_path):
    import minillava.model.backbones as backbones
    monkeypatch.setattr(backbones, "TINY_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="minillava train --stage 0"):
        backbones.load_vision("tiny")
