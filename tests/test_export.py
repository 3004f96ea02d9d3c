"""Export to transformers' LlavaForConditionalGeneration: same logits, same greedy tokens, loadable from disk."""

from __future__ import annotations

import pytest
import torch

from conftest import make_random_model
from minillava.conversation import VICUNA_SYSTEM, get_template, prompt_ids
from minillava.model.export import export_model, to_hf_llava
from minillava.stage0 import CLIP_MEAN, CLIP_STD, to_pixels

QUESTION = "<image>\nWhat color is the circle?"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def scenes():
    from minillava.data.shapes import generate_split
    return generate_split(4, "val", seed=1, size_px=96)


@pytest.fixture(scope="module")
def pair():
    """A random mlp2x_gelu MiniLlava and its Llava export (select_layer -2, CLS dropped)."""
    model = make_random_model().eval()
    llava, config = to_hf_llava(model)
    return model, llava, config


def _inputs(model, scenes, questions=(QUESTION,)):
    """Left-padded prompt ids with N <image> tokens each, as inference.answer_batch builds them, and pixels."""
    from minillava.inference import left_pad
    prompts = [prompt_ids(q, model.tokenizer, get_template("vicuna_v1"), image_tokens=model.num_image_tokens)
               for q in questions]
    ids, mask = left_pad(prompts, model.tokenizer.pad_token_id)
    return ids, mask, to_pixels([s[2] for s in scenes[:len(questions)]])


def _assert_same_logits(model, llava, ids, mask, pixels):
    with torch.no_grad():
        ours = model.logits(ids, mask, pixel_values=pixels)
        theirs = llava(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert ours.dtype == theirs.dtype == torch.float32
    keep = mask.bool()  # padded positions are not compared
    torch.testing.assert_close(theirs[keep], ours[keep], atol=1e-5, rtol=1e-5)


def test_config_mirrors_the_model(pair):
    model, llava, config = pair
    assert config.vision_feature_layer == model.select_layer == -2
    assert config.vision_feature_select_strategy == "default"
    assert config.image_token_id == config.image_token_index == model.image_token_id
    assert config.image_seq_length == model.num_image_tokens == 9
    assert config.projector_hidden_act == "gelu" and config.multimodal_projector_bias
    assert config.text_config.vocab_size == model.lm.get_input_embeddings().weight.shape[0]
    # every tensor was copied: nothing left at its random initialisation
    torch.testing.assert_close(llava.model.multi_modal_projector.linear_2.weight, model.projector[2].weight)
    torch.testing.assert_close(llava.lm_head.weight, model.lm.lm_head.weight)
    torch.testing.assert_close(llava.model.vision_tower.embeddings.patch_embedding.weight,
                               model.vision.embeddings.patch_embedding.weight)


def test_logits_match_penultimate_layer(pair, scenes):
    model, llava, _ = pair
    ids, mask, pixels = _inputs(model, scenes, [QUESTION, "<image>\nDescribe the image in detail, please."])
    assert mask[0].sum() < mask[1].sum() or mask[1].sum() < mask[0].sum()  # one row is left-padded
    assert int((ids == model.image_token_id).sum()) == 2 * model.num_image_tokens
    _assert_same_logits(model, llava, ids, mask, pixels)


def test_logits_match_last_layer(scenes):
    model = make_random_model(select_layer=-1, seed=1).eval()
    llava, config = to_hf_llava(model)
    assert config.vision_feature_layer == -1
    ids, mask, pixels = _inputs(model, scenes)
    _assert_same_logits(model, llava, ids, mask, pixels)
    # and the layer matters: the -2 export of the same weights gives other logits
    model.select_layer = -2
    with torch.no_grad():
        other = model.logits(ids, mask, pixel_values=pixels)
        theirs = llava(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert not torch.allclose(other, theirs, atol=1e-3)


def test_logits_match_with_cls_and_tied_embeddings(pair, scenes):
    """keep_cls → strategy "full" (N = 9 + 1); a tied LM head stays tied and equal."""
    from transformers import LlamaForCausalLM

    from minillava.model import MiniLlava
    from minillava.model.backbones import tiny_lm_config
    from minillava.model.export import llava_processor

    base = pair[0]
    lm_config = tiny_lm_config(len(base.tokenizer), base.tokenizer)
    lm_config.tie_word_embeddings = True
    torch.manual_seed(3)
    model = MiniLlava(base.vision, LlamaForCausalLM(lm_config), base.tokenizer, keep_cls=True).eval()
    llava, config = to_hf_llava(model)
    assert config.vision_feature_select_strategy == "full" and model.num_image_tokens == 10
    assert config.tie_word_embeddings and llava.lm_head.weight is llava.model.language_model.embed_tokens.weight
    ids, mask, pixels = _inputs(model, scenes)
    _assert_same_logits(model, llava, ids, mask, pixels)
    processor = llava_processor(model, base_image_processor())
    inputs = processor(images=[scenes[0][2]], text="USER: <image>\nHi ASSISTANT:", return_tensors="pt")
    assert int((inputs["input_ids"] == model.image_token_id).sum()) == 10


def base_image_processor():
    from minillava.model.backbones import image_processor_class
    return image_processor_class()(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96},
                                   image_mean=CLIP_MEAN, image_std=CLIP_STD)


def test_greedy_generation_matches(pair, scenes):
    model, llava, _ = pair
    ids, mask, pixels = _inputs(model, scenes)
    ours = model.generate(ids, mask, pixel_values=pixels, max_new_tokens=10)
    with torch.no_grad():
        theirs = llava.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=10,
                                do_sample=False)[:, ids.shape[1]:]
    assert ours.shape[1] > 0
    assert theirs.tolist() == ours.tolist()


def test_linear_projector_is_refused():
    model = make_random_model(projector="linear")
    with pytest.raises(ValueError, match="only the 'mlp2x_gelu' projector"):
        to_hf_llava(model)


def _save_as_model_dir(model, root):
    """Write ``model``'s backbones as local directories and the model as a minillava model directory."""
    from minillava.config import load_config
    from minillava.model.build import save_model

    vision_dir, lm_dir = root / "vision", root / "lm"
    model.vision.save_pretrained(vision_dir)
    base_image_processor().save_pretrained(vision_dir)  # as stage 0 saves the tiny tower's
    model.lm.save_pretrained(lm_dir)
    model.tokenizer.save_pretrained(lm_dir)
    cfg = load_config("tiny", {"vision_name": str(vision_dir), "lm_name": str(lm_dir)})
    return save_model(model, cfg, root / "model")


def test_round_trip_through_disk(tmp_path, scenes):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from minillava.inference import answer_batch
    from minillava.model.build import load_model

    source = make_random_model(seed=2).eval()
    with torch.no_grad():  # a trained-looking projector, not the seed's default init
        source.projector[2].weight.mul_(3.0)
    model_dir = _save_as_model_dir(source, tmp_path)
    out = export_model(model_dir, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()

    model, image_processor, _ = load_model(model_dir)
    llava, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    llava.eval()
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "LlavaProcessor"

    images = [s[2] for s in scenes[:2]]
    questions = ["What color is the circle?", "How many objects are there?"]
    texts = [f"{VICUNA_SYSTEM} USER: <image>\n{q} ASSISTANT:" for q in questions]
    # the chat template renders the same text as our vicuna_v1 template
    for q, text in zip(questions, texts):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text

    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert not inputs["attention_mask"][:, -1].eq(0).any() and inputs["attention_mask"].eq(0).any()  # left-padded
    for row, q in enumerate(questions):  # one <image> became N tokens; BOS is added like prompt_ids does
        ours = prompt_ids(f"<image>\n{q}", model.tokenizer, get_template("vicuna_v1"),
                          image_tokens=model.num_image_tokens)
        got = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
        assert got.tolist() == ours.tolist()
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(inputs["pixel_values"], pixels)

    with torch.no_grad():
        generated = llava.generate(**inputs, max_new_tokens=10, do_sample=False)
    theirs = [processor.decode(seq, skip_special_tokens=True).strip()
              for seq in generated[:, inputs["input_ids"].shape[1]:]]
    ours = answer_batch(model, questions, pixel_values=pixels, max_new_tokens=10)
    assert theirs == ours
    assert any(theirs)  # something was generated and compared


@pytest.mark.parametrize("template", ["vicuna_v1", "v0"])
def test_chat_template_renders_multi_turn(pair, template):
    from minillava.model.export import chat_template, hf_tokenizer
    model = pair[0]
    tok = hf_tokenizer(model.tokenizer)
    tok.chat_template = chat_template(template, tok)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": "A red square."},
                {"role": "user", "content": "Where is it?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text)["input_ids"]  # as LlavaProcessor tokenises it: the tokenizer adds BOS
    ours = prompt_ids("Where is it?", model.tokenizer, get_template(template), image_tokens=1,
                      history=[("<image>\nWhat is it?", "A red square.")])
    assert list(ids) == ours.tolist()
