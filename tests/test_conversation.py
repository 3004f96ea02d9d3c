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


def test_v0_template_is_the_papers_table2_format(random_model):
    """§4.2 Table 2 / the authors' conv_llava_v0: {system}###Human: q###Assistant: a###, and ### is trained."""
    tok = random_model.tokenizer
    item = tokenize_conversation(SAMPLE, tok, get_template("v0"), image_tokens=9)
    text = tok.decode(item["input_ids"])
    assert "a curious human" in text and "the human's questions.###Human: " in text
    assert "###Assistant: The circle is red.###" in text
    assert loss_text(item, tok).startswith(" The circle is red.###")  # the <STOP> after the answer carries loss


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


# --- the LM's own chat format (template "chat"), read off a tokenizer's chat template -----------------------

def chatml(style: str, **changes):
    from minillava.model.known import chatml_tokenizer
    tok = chatml_tokenizer(style, ["What color is the circle? The circle is red. How many shapes are there?"] * 4,
                           vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    for key, value in changes.items():
        setattr(tok, key, value)
    return tok


@pytest.mark.parametrize("style", ["smollm2", "qwen2"])
def test_chat_template_gives_the_lms_own_prompt_and_masks_all_but_answers(style):
    tok = chatml(style)
    tmpl = get_template("chat", tok)
    sample = make_sample("c1", "x.png", [("What color is the circle?", "The circle is red."),
                                         ("How many shapes are there?", "Two.")], "conv")
    item = tokenize_conversation(sample, tok, tmpl, image_tokens=4)
    messages = [{"role": "user", "content": "<image>\nWhat color is the circle?"},
                {"role": "assistant", "content": "The circle is red."},
                {"role": "user", "content": "How many shapes are there?"}]
    ours = tok.decode([t for t in item["input_ids"].tolist() if t != tok.convert_tokens_to_ids("<image>")])
    theirs = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.startswith(theirs.replace("<image>", ""))  # the same text the LM was instruction-tuned on
    answers = tok.decode(item["input_ids"][item["labels"] != IGNORE_INDEX])
    assert answers == "The circle is red.<|im_end|>Two.<|im_end|>"
    assert tmpl.bos is False and item["input_ids"][0] == tok.convert_tokens_to_ids("<|im_start|>")
    prompt = prompt_ids("<image>\nWhat color is the circle?", tok, tmpl, image_tokens=4)
    assert item["input_ids"][:len(prompt)].tolist() == prompt.tolist()


def test_chat_template_stops_on_im_end_when_eos_is_endoftext():
    """A base Qwen tokenizer's EOS is <|endoftext|>, but its chat template closes turns with <|im_end|>."""
    from minillava.conversation import stop_token_ids

    tok = chatml("qwen2", eos_token="<|endoftext|>")
    tmpl = get_template("chat", tok)
    assert tmpl.turn_end == "<|im_end|>"
    assert stop_token_ids(tmpl, tok) == [tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")]


def test_chat_template_refuses_what_it_cannot_express():
    no_template = chatml("smollm2")
    no_template.chat_template = None
    with pytest.raises(ValueError, match="has no chat template; use stage2_template=vicuna_v1"):
        get_template("chat", no_template)
    rewriting = chatml("smollm2")  # earlier assistant turns are dropped, as reasoning LMs' templates do
    rewriting.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' or loop.last %}<|im_start|>"
                               "{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ValueError, match="template 'chat'"):
        get_template("chat", rewriting)
    with pytest.raises(ValueError, match="needs the LM's tokenizer"):
        get_template("chat")
