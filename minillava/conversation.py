"""§4.2 conversation templates and the loss mask.

The paper trains on p(X_a | X_v, X_instruct) = ∏_i p(x_i | X_v, X_instruct,<i, X_a,<i)  (§4.2, eq. 3):
only the assistant's answers (and the stop token after each) carry loss. Everything else — the system
message, the questions, the image positions — is labelled -100, which torch's cross-entropy ignores.

Templates:
- ``plain``     (stage 1): ``<image>`` then the caption then a newline; the question text is dropped.
- ``vicuna_v1`` (stage 2, LLaVA-1.5): ``{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ...``
- ``v0``        (LLaVA, §4.2 Table 2): ``{system}###Human: {q1}###Assistant: {a1}###Human: ...``, the ``<STOP>``
                = ``###`` after each answer trained as the stop, as the authors' ``conv_llava_v0`` renders it
                (``llava/conversation.py``; their v0 training code wrote the same turns as ``### Human: …\\n`` lines)
- ``chat``      (stage 2 for an instruct LM): the LM's own chat format, read off its tokenizer's chat template
                (ChatML for SmolLM2 and Qwen2.5: ``<|im_start|>user\\n{q1}<|im_end|>\\n<|im_start|>assistant\\n{a1}<|im_end|>``),
                so the model is tuned in the format the LM was instruction-tuned in and stops on the LM's own stop token.

We tokenise piece by piece (so we know which tokens are answers) and then check that the pieces add up to the
tokenisation of the whole text. The authors' code, on a mismatch, silently sets every label of the sample to
-100 and the loss quietly goes to 0; here a mismatch raises :class:`TokenizationMismatch` naming the sample.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


# LLaVA's own (v0) system message says "human" where Vicuna v1.1's says "user" (``conv_llava_v0``)
V0_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
             "helpful, detailed, and polite answers to the human's questions.")


class TokenizationMismatch(ValueError):
    """The per-turn pieces do not tokenise to the same ids as the whole conversation."""


@dataclass(frozen=True)
class Template:
    """How turns are joined. Each turn renders as ``user_prefix + q + assistant_prefix`` then ``a + turn_end``."""

    name: str
    system: str
    user_prefix: str
    assistant_prefix: str
    turn_end: str  # closes every answer and carries loss: the model must learn when to stop
    keep_question: bool = True
    turn_sep: str = ""         # text between a turn_end and the next question (no loss); ChatML: "\n"
    answer_space: bool = True  # a space before the answer ("ASSISTANT: yes"); not after ChatML's "assistant\n"
    bos: bool = True           # prepend the tokenizer's BOS; a chat template writes its own start (or none)


TEMPLATES = {
    "plain": Template("plain", "", "", "", "\n", keep_question=False),
    "vicuna_v1": Template("vicuna_v1", VICUNA_SYSTEM + " ", "USER: ", " ASSISTANT:", "</s>"),
    "v0": Template("v0", V0_SYSTEM + "###", "Human: ", "###Assistant:", "###"),
}
CHAT = "chat"  # not a fixed template: derived from the tokenizer by ``template_from_chat_template``
TEMPLATE_NAMES = (*TEMPLATES, CHAT)


def get_template(name: str, tokenizer=None) -> Template:
    """A template by name; ``chat`` needs the tokenizer whose chat template it is read from."""
    if name == CHAT:
        if tokenizer is None:
            raise ValueError("template 'chat' is the LM's own chat format: it needs the LM's tokenizer")
        return template_from_chat_template(tokenizer)
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; expected one of {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATES[name]


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n:]


def template_from_chat_template(tokenizer) -> Template:
    """Read a Template off the tokenizer's Jinja chat template by rendering marker conversations.

        render([user Q1])                      = S + U + Q1 + P                (generation prompt)
        render([user Q1, assistant A1, user Q2]) = S + U + Q1 + P + A1 + E + sep + U + Q2 + P

    E is the stop token that follows an answer (the tokenizer's EOS, or for a base tokenizer whose EOS is
    ``<|endoftext|>`` the special token the template closes turns with, e.g. ``<|im_end|>``). The second render is
    then checked to be exactly the template's pieces, so a format we cannot express (one that rewrites earlier
    turns, or thinking blocks) is refused in one line instead of training on a misaligned mask.
    """
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"template 'chat': {name} has no chat template; use stage2_template=vicuna_v1")
    q1, a1, q2 = "MINILLAVA_Q1", "MINILLAVA_A1", "MINILLAVA_Q2"

    def render(messages) -> str:  # always up to the next assistant turn, as a prompt for generation
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    one = render([{"role": "user", "content": q1}])
    two = render([{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                  {"role": "user", "content": q2}])
    refuse = ValueError(f"template 'chat': the chat template of {name} is not a plain alternation of turns "
                        f"(system, user, assistant); use stage2_template=vicuna_v1")
    if one.count(q1) != 1 or [two.count(m) for m in (q1, a1, q2)] != [1, 1, 1]:
        raise refuse  # e.g. earlier answers dropped from the prompt, as reasoning LMs' templates do
    start, assistant_prefix = one.split(q1)
    between = two.split(a1)[1].split(q2)[0]  # E + sep + U
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
    specials = [tokenizer.eos_token or "", *getattr(tokenizer, "all_special_tokens", []), *added]
    stop = next((t for t in specials if t and between.startswith(t)), None)
    if stop is None:
        raise ValueError(f"template 'chat': the chat template of {name} does not close an answer with a special "
                         f"token (after the answer comes {between[:20]!r}); use stage2_template=vicuna_v1")
    rest = between[len(stop):]
    user_prefix = _common_suffix(start, rest)
    tmpl = Template(CHAT, start[:len(start) - len(user_prefix)], user_prefix, assistant_prefix, stop,
                    turn_sep=rest[:len(rest) - len(user_prefix)], answer_space=False, bos=False)
    expected = "".join(t for t, _ in conversation_pieces(
        [{"from": "human", "value": q1}, {"from": "gpt", "value": a1}, {"from": "human", "value": q2},
         {"from": "gpt", "value": ""}], tmpl)[:-1])
    if not user_prefix or expected != two:
        raise refuse
    return tmpl


def stop_token_ids(template: Template, tokenizer) -> list[int]:
    """Generation stops on the token that closes an answer in training (and on EOS): a wrong stop id is the
    classic small-VLM bug of answers running on into a made-up next turn."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end = for_tokenizer(template, tokenizer).turn_end
    end_id = tokenizer.convert_tokens_to_ids(end) if end in tokenizer.get_vocab() else None
    return ids + [end_id] if end_id is not None and end_id not in ids else ids


def for_tokenizer(template: Template, tokenizer) -> Template:
    """Vicuna's stop token is ``</s>``; other LMs stop on their own EOS (SmolLM2 ``<|im_end|>``, Qwen ...)."""
    eos = tokenizer.eos_token or "</s>"
    return replace(template, turn_end=template.turn_end.replace("</s>", eos))


def conversation_pieces(conversations: list[dict], template: Template) -> list[tuple[str, bool]]:
    """Render LLaVA turns as (text, carries_loss) pieces whose concatenation is the full prompt text."""
    pieces: list[tuple[str, bool]] = []
    prefix = template.system
    for i in range(0, len(conversations), 2):
        question, answer = conversations[i]["value"], conversations[i + 1]["value"]
        if not template.keep_question:  # plain: only the image placeholder survives from the human turn
            question = IMAGE_TOKEN if IMAGE_TOKEN in question else ""
        pieces.append((prefix + template.user_prefix + question + template.assistant_prefix, False))
        # answers start with a space after "ASSISTANT:" so the tokenizer sees a word boundary
        space = " " if template.assistant_prefix and template.answer_space else ""
        pieces.append((space + answer.strip() + template.turn_end, True))
        prefix = template.turn_sep
    return pieces


def tokenize_conversation(sample: dict, tokenizer, template: Template, *, image_tokens: int,
                          max_length: int | None = None) -> dict:
    """One LLaVA-format sample → ``input_ids`` and ``labels`` (answers only), image placeholder expanded.

    The single ``<image>`` token is repeated ``image_tokens`` times (N = number of projected patches), so the
    model can splice H_v into those positions with one masked assignment. Returns also ``truncated`` (bool).
    """
    pieces = conversation_pieces(sample["conversations"], for_tokenizer(template, tokenizer))
    ids: list[int] = [tokenizer.bos_token_id] if template.bos and tokenizer.bos_token_id is not None else []
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    start = len(ids)  # the BOS, if any, is not part of the text
    for text, carries_loss in pieces:
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        labels += piece_ids if carries_loss else [IGNORE_INDEX] * len(piece_ids)

    whole = tokenizer("".join(t for t, _ in pieces), add_special_tokens=False)["input_ids"]
    if ids[start:] != whole:
        at = next((i for i, (a, b) in enumerate(zip(ids[start:], whole)) if a != b), min(len(whole), len(ids) - start))
        raise TokenizationMismatch(
            f"sample {sample.get('id')!r}: per-turn tokenisation differs from the whole conversation at token {at} "
            f"(pieces give {tokenizer.convert_ids_to_tokens(ids[start + at:start + at + 4])}, the whole text gives "
            f"{tokenizer.convert_ids_to_tokens(whole[at:at + 4])}); "
            f"the loss mask would be misaligned")
    if not any(label != IGNORE_INDEX for label in labels):
        raise TokenizationMismatch(f"sample {sample.get('id')!r}: no token carries loss (empty answers?)")

    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    expanded_ids, expanded_labels = [], []
    for token, label in zip(ids, labels):
        n = image_tokens if token == image_id else 1
        expanded_ids += [token] * n
        expanded_labels += [label] * n
    truncated = max_length is not None and len(expanded_ids) > max_length
    if truncated:
        expanded_ids, expanded_labels = expanded_ids[:max_length], expanded_labels[:max_length]
    return {"input_ids": torch.tensor(expanded_ids), "labels": torch.tensor(expanded_labels), "truncated": truncated}


def prompt_ids(question: str, tokenizer, template: Template, *, image_tokens: int,
               history: list[tuple[str, str]] = ()) -> torch.Tensor:
    """Token ids of a prompt ending at the assistant prefix, ready for generation (image placeholder expanded)."""
    turns = [{"from": "human", "value": q} if j == 0 else {"from": "gpt", "value": a}
             for q, a in history for j in (0, 1)]
    turns += [{"from": "human", "value": question}, {"from": "gpt", "value": ""}]
    pieces = conversation_pieces(turns, for_tokenizer(template, tokenizer))[:-1]
    text = "".join(t for t, _ in pieces)
    ids = ([tokenizer.bos_token_id] if template.bos and tokenizer.bos_token_id is not None else []) + \
        tokenizer(text, add_special_tokens=False)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    out = [t for token in ids for t in ([token] * (image_tokens if token == image_id else 1))]
    return torch.tensor(out)


def loss_mask_pieces(input_ids: torch.Tensor, labels: torch.Tensor, tokenizer) -> list[tuple[str, str]]:
    """A sample token by token as (text, kind): kind ``loss`` where the label carries loss, ``context`` where it is
    -100, ``image`` for a run of N image ids, collapsed into one ``<image×N>`` piece; newlines shown as ⏎."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    pieces, run = [], 0
    for token, label in zip(input_ids.tolist(), labels.tolist()):
        if token == image_id:
            run += 1
            continue
        if run:
            pieces.append((f"<image×{run}>", "image"))
            run = 0
        pieces.append((tokenizer.decode([token]).replace("\n", "⏎"), "loss" if label != IGNORE_INDEX else "context"))
    if run:
        pieces.append((f"<image×{run}>", "image"))
    return pieces


def render_loss_mask(input_ids: torch.Tensor, labels: torch.Tensor, tokenizer, width: int = 100) -> str:
    """Text view of which tokens carry loss: ``[answer tokens]`` in brackets, image runs collapsed."""
    out = [f"[{text}]" if kind == "loss" else text for text, kind in loss_mask_pieces(input_ids, labels, tokenizer)]
    lines, line = [], ""
    for piece in out:  # wrap between tokens, never inside one
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    return "\n".join(lines + [line])
