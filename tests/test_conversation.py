"""§4.2: templates, answer-only loss masks, and a loud error where the authors' code silently zeroes the loss."""

import pytest

from minillava.conversation import (IGNORE_INDEX, Template, TokenizationMismatch, get_template, prompt_ids,
                                    render_loss_mask, tokenize_conversation)
from minillava.data.llava_json import make_sample

SAMPLE = make_sample("s1", "x.png", [("What color is the circle?", "The circle is red."),
                                     ("How many shapes are there?", "There are two shapes.")])


def loss_text(item, tokenizer):
    keep = item["labels"] != IGNORE_INDEX
    return tokenizer.decode(item["input_ids"][keep])


def test_vicuna_v1_loss_only_on_answers_and_stop_tokens(random_model):
    tok = random_model.tokenizer
    item = tokenize_conversation(SAMPLE, tok, get_template("vicuna_v1"), image_tokens=9)
    assert loss_text(item, tok) == " The circle is red.</s> There are two shapes.</s>"
    full = tok.decode(item["input_ids"])
    assert full.startswith("<s>A chat between a curious user") and "USER: " + "<image>" * 9 + "\nWhat color" in full
    assert full.endswith("ASSISTANT: There are two shapes.</s>")
    image = item["input_ids"] == tok.convert_tokens_to_ids("<image>")
    assert int(image.sum()) == 9 and (item["labels"][image] == IGNORE_INDEX).all()


def test_plain_template_drops_the_question(random_model):
    tok = random_model.tokenizer
    sample = make_sample("c", "x.png", [("Describe the image briefly.", "A red circle.")])
    item = tokenize_conversation(sample, tok, get_template("plain"), image_tokens=9)
    assert tok.decode(item["input_ids"]) == "<s>" + "<image>" * 9 + "A red circle.\n"
    assert loss_text(item, tok) == "A red circle.\n"


def test_v0_template(random_model):
    item = tokenize_conversation(SAMPLE, random_model.tokenizer, get_template("v0"), image_tokens=9)
    text = random_model.tokenizer.decode(item["input_ids"])
    assert "### Human: " in text and "\n### Assistant: The circle is red.\n" in text


def test_mismatch_raises_naming_the_sample(random_model):
    glued = Template("glued", "", "", "", "\n")  # question and answer run together with no boundary
    sample = make_sample("bad-7", "x.png", [("What color is the circ", "le? It is red.")])  # "circ"+"le" ≠ "circle"
    with pytest.raises(TokenizationMismatch, match="bad-7"):
        tokenize_conversation(sample, random_model.tokenizer, glued, image_tokens=9)


def test_truncation_is_reported(random_model):
    item = tokenize_conversation(SAMPLE, random_model.tokenizer, get_template("vicuna_v1"), image_tokens=9,
                                 max_length=60)
    assert item["truncated"] and len(item["input_ids"]) == 60


def test_prompt_matches_training_prefix(random_model):
    """Generation prompts are exactly the training text up to the answer, so train and test agree."""
    tok = random_model.tokenizer
    item = tokenize_conversation(SAMPLE, tok, get_template("vicuna_v1"), image_tokens=9)
    prompt = prompt_ids("<image>\nWhat color is the circle?", tok, get_template("vicuna_v1"), image_tokens=9)
    assert item["input_ids"][:len(prompt)].tolist() == prompt.tolist()
    assert item["labels"][len(prompt)] != IGNORE_INDEX and item["labels"][len(prompt) - 1] == IGNORE_INDEX


def test_render_loss_mask_brackets_answer_tokens(random_model):
    tok = random_model.tokenizer
    item = tokenize_conversation(SAMPLE, tok, get_template("vicuna_v1"), image_tokens=9)
    text = render_loss_mask(item["input_ids"], item["labels"], tok, width=10_000)
    assert "<image×9>" in text and "[</s>]" in text and "[ red]" in text.replace("[ red.]", "[ red]")
    assert "[USER" not in text


def test_unknown_template():
    with pytest.raises(ValueError, match="unknown template 'chatml'"):
        get_template("chatml")
