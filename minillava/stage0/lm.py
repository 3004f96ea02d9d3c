"""Stage 0b: a tiny chat LM, the stand-in for Vicuna that LLaVA's language model f_φ starts from (§4.1).

LLaVA inherits from Vicuna the skill of answering in the chat template; stage 2 only teaches it to answer from
image tokens. So the stand-in is trained on text alone, in the stage-2 template, to answer questions about a scene
*described in words* (``scene_in_words`` stands where ``<image>`` would). Phase 1 draws the dialogue kinds of §3
(conversation, detailed description, complex reasoning, brief captions); phase 2 (``focus_chat_lm``) drills the
question kinds phase 1 leaves at the majority answer. The check is text-only exact match (``text_qa_accuracy``).
"""

from __future__ import annotations

import json
import random
from collections import Counter

import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM

from ..conversation import IMAGE_TOKEN, get_template, prompt_ids, tokenize_conversation
from ..data.dataset import MIN_SHARED_PREFIX, left_pad, pad_right, prefix_worth_sharing
from ..data.llava_json import make_sample
from ..data.prompts import BRIEF_PROMPTS, DETAIL_PROMPTS
from ..data.shapes import COLORS, SHAPES
from ..data.teachers import QA, answer_is_correct, describe_scene, reasoning_question, scene_questions, stated_answer
from ..data.words import a
from ..model.backbones import tiny_lm_config
from ..model.llava import answer_loss
from .schedule import warmup_cosine


def scene_in_words(record) -> str:
    """What stands in for the image in every text-only dialogue: 'Scene: A large red circle at the top left, ...'"""
    return f"Scene: {record.captions[1]}"


def scene_dialogue(name: str, record, turns: list[tuple[str, str]], scene: str) -> dict:
    """A LLaVA-format sample of ``turns`` about ``record`` whose image is given as text: ``scene`` (a sentence or the
    nine cell words) stands where the first question's ``<image>`` would be."""
    sample = make_sample(name, record.file_name, turns)
    first = sample["conversations"][0]
    first["value"] = first["value"].replace(IMAGE_TOKEN, scene)
    return sample


def text_sample(record, rng: random.Random, scene: str | None = None, worked: bool = False) -> dict:
    """A text-only dialogue about a scene given in words, in the stage-2 template (the image is a sentence);
    ``worked``: relations answered with both cells first (``data.teachers.relation_answer``)."""
    scene = scene or scene_in_words(record)
    kind = rng.random()
    if kind < 0.6:
        qas = scene_questions(record, rng, worked=worked)
        turns = [(q.question, q.answer) for q in qas[:rng.randint(2, min(5, len(qas)))]]
    elif kind < 0.75:
        turns = [(rng.choice(DETAIL_PROMPTS), describe_scene(record))]
    elif kind < 0.9:
        qa = reasoning_question(record, rng)
        turns = [(qa.question, qa.answer)]
    else:
        turns = [(rng.choice(BRIEF_PROMPTS), rng.choice(record.captions))]
    return scene_dialogue(f"text_{record.image_id}", record, turns, scene)


def fit_lm(lm, tokenizer, draw, rng: random.Random, *, steps: int, batch: int, lr: float, warmup: float,
           max_length: int, desc: str, report, share_prefix: bool = False) -> LlamaForCausalLM:
    """AdamW + warmup/cosine on text dialogues ``draw(rng)`` in the stage-2 template; ``report(step, loss)`` logs.

    The loss is the mean over the batch's answer tokens (eq. 3). With ``share_prefix`` the rows that open with the
    same system prompt run it once (``model.llava.answer_loss``, as stage 2 does); same loss, fewer FLOPs."""
    template = get_template("vicuna_v1")
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_steps=max(1, int(warmup * steps))))
    bar = tqdm(range(steps), desc=desc)
    for step in bar:
        samples = [draw(rng) for _ in range(batch)]  # a sample may bring its own template (stage-1 "plain")
        items = [tokenize_conversation(x, tokenizer, x.pop("template", template), image_tokens=1,
                                       max_length=max_length) for x in samples]
        if share_prefix:
            loss = shared_prefix_loss(lm, items, tokenizer)
        else:
            padded = pad_right(items, tokenizer.pad_token_id)  # (B, L); labels -100 outside the answers, as in eq. 3
            loss = lm(**{k: v.to(lm.device) for k, v in padded.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        report(step, loss.item())
    return lm


def phase_report(stage: str, steps: int, lm, tokenizer, held_out=None, log=print, every: int = 500, in_words=None):
    """``fit_lm``'s ``report`` for a chat-LM phase: the loss every 100 steps and at the last, and with ``held_out``
    text-only QA on 300 questions every ``every`` steps and at the last (``in_words``: ``text_qa_accuracy``)."""
    def report(step: int, loss: float) -> None:
        if step % 100 == 0 or step == steps - 1:
            row = {"stage": stage, "step": step, "loss": round(loss, 4)}
            if held_out is not None and (step % every == 0 or step == steps - 1):
                row["text_qa"] = {k: v["accuracy"] for k, v in
                                  text_qa_accuracy(lm, tokenizer, held_out, 300, in_words).items()}
            log(json.dumps(row))
    return report


def shared_prefix_loss(lm, items: list[dict], tokenizer) -> torch.Tensor:
    """Mean -log p over the answer tokens of ``items``: rows that open alike are grouped (a chat dialogue opens
    with BOS + system prompt, a stage-1 ``plain`` sample with its scene) and each group's common prefix runs
    through the LM once."""
    groups: dict[tuple, list[dict]] = {}
    for item in items:
        groups.setdefault(tuple(item["input_ids"][:MIN_SHARED_PREFIX].tolist()), []).append(item)
    rest = [item for group in groups.values() if len(group) == 1 for item in group]  # nothing to share
    groups = [group for group in groups.values() if len(group) > 1] + ([rest] if rest else [])
    total, count = 0.0, 0
    for group in groups:
        padded = {k: v.to(lm.device) for k, v in pad_right(group, tokenizer.pad_token_id).items()}
        embeds = lm.get_input_embeddings()(padded["input_ids"])  # (B, L, D)
        loss, n = answer_loss(lm, embeds, padded["labels"], padded["attention_mask"],
                              shared_prefix=prefix_worth_sharing(padded["input_ids"], padded["labels"], -1))
        total, count = total + loss, count + n
    return total / max(count, 1)


def new_chat_lm(cfg, tokenizer) -> LlamaForCausalLM:
    """The untrained tiny Llama every recipe starts from (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(tiny_lm_config(len(tokenizer), tokenizer))


def train_chat_lm(cfg, scenes, tokenizer, log=print, lm=None) -> LlamaForCausalLM:
    """Phase 1: a fresh tiny Llama (or ``lm``, drilled) trained on ``text_sample`` dialogues (all four kinds of
    §3 data, in words)."""
    lm = lm if lm is not None else new_chat_lm(cfg, tokenizer)

    def report(step: int, loss: float) -> None:
        if step % 100 == 0:
            log(json.dumps({"stage": "0b", "step": step, "loss": round(loss, 4)}))
    return fit_lm(lm, tokenizer, lambda rng: text_sample(rng.choice(scenes)[0], rng), random.Random(cfg.seed + 1),
                  steps=cfg.lm_steps, batch=cfg.lm_batch, lr=cfg.lm_lr, warmup=0.03, max_length=cfg.max_length,
                  desc="stage 0b: tiny chat LM", report=report, share_prefix=cfg.lm_share_prefix)


# Kinds that need the LM to find a named object in the scene text and read an attribute *not* next to the
# name (size), check a colour+shape pair against every object (exists) or combine two cells (relation).
# Phase 1 left them at the majority answer ("small", "yes"): the lookup is learned late, after a plateau.
FOCUS_KINDS = ("exists", "size", "relation", "position")


def focus_sample(record, rng: random.Random, scene: str | None = None, kinds=FOCUS_KINDS,
                 worked: bool = False) -> dict:
    """A short text-only dialogue (1–3 turns) that asks mostly about ``kinds``; the scene is in words (``worked``:
    ``text_sample``).

    "No" exists-questions name an absent pair that shares its colour or its shape with an object in the scene,
    so matching one word is not enough (the teacher's random absent pair usually shares neither)."""
    qas = scene_questions(record, rng, worked=worked)
    focus = [q for q in qas if q.kind in kinds]
    present = {f"{o.color} {o.category}" for o in record.objects}
    near = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present
            and any(c == o.color or s == o.category for o in record.objects)]
    if near and rng.random() < 0.5:
        miss = rng.choice(near)
        focus.append(QA(f"Is there {a(miss)} in the image?", f"No, there is no {miss}.", "exists", "no"))
    pool = focus if focus and rng.random() < 0.75 else qas
    turns = [(q.question, q.answer) for q in rng.sample(pool, min(len(pool), rng.randint(1, 3)))]
    return scene_dialogue(f"focus_{record.image_id}", record, turns, scene or scene_in_words(record))


def focus_chat_lm(cfg, lm, scenes, tokenizer, held_out=None, log=print) -> LlamaForCausalLM:
    """Phase 2: a fresh AdamW on ``focus_sample`` dialogues, 3 in 10 of them phase-1 samples so nothing is forgotten.

    It starts from the phase-1 LM rounded to bf16, i.e. from exactly the weights a phase-1-only recipe would
    ship, so a run continued from shipped weights and a run from scratch take the same steps."""
    lm.to(torch.bfloat16).to(torch.float32)
    torch.manual_seed(cfg.seed + 2)
    steps = cfg.lm_focus_steps
    report = phase_report("0b-focus", steps, lm, tokenizer, held_out, log, every=200)
    return fit_lm(lm, tokenizer,
                  lambda rng: (focus_sample if rng.random() < 0.7 else text_sample)(rng.choice(scenes)[0], rng),
                  random.Random(cfg.seed + 2), steps=steps, batch=cfg.lm_focus_batch, lr=cfg.lm_focus_lr,
                  warmup=0.05, max_length=cfg.max_length, desc="stage 0b: chat LM, focus phase", report=report,
                  share_prefix=cfg.lm_share_prefix)


@torch.no_grad()
def text_qa_accuracy(lm, tokenizer, scenes, max_questions: int = 600, in_words=None,
                     answers: list | None = None, max_new_tokens: int = 48) -> dict:
    """Exact-match accuracy per question kind when the scene is given in words, and the majority baseline.

    ``in_words(record, layout)`` writes the scene (default: the sentence of ``scene_in_words``). ``answers``, if
    given, receives one row per question in the form ``eval.accuracy.answer_habits`` reads. ``max_new_tokens``
    leaves room for a worked relation answer (both cells, then the relation: up to 33 tokens)."""
    in_words = in_words or (lambda record, layout: scene_in_words(record))
    template = get_template("vicuna_v1")
    lm.eval()
    rows = []
    for record, layout, _ in scenes:
        rng = random.Random(record.image_id)
        for qa in scene_questions(record, rng)[:3]:
            rows.append((in_words(record, layout), qa))
    rows = rows[:max_questions]
    correct, answers_by_kind = Counter(), {}
    total = Counter()
    for i in range(0, len(rows), 64):
        chunk = rows[i:i + 64]
        prompts = [prompt_ids(f"{scene}\n{qa.question}", tokenizer, template, image_tokens=1)
                   for scene, qa in chunk]
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)  # (B, L): every prompt ends where generation starts
        length = ids.shape[1]
        out = lm.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), max_new_tokens=max_new_tokens,
                          do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        for (_, qa), seq in zip(chunk, out[:, length:]):
            text = tokenizer.decode(seq, skip_special_tokens=True)
            total[qa.kind] += 1
            correct[qa.kind] += answer_is_correct(qa, text)
            if answers is not None:
                answers.append({"kind": qa.kind, "question": qa.question, "key": qa.key, "answer": text,
                                "stated": stated_answer(qa.kind, text), "correct": answer_is_correct(qa, text)})
            answers_by_kind.setdefault(qa.kind, []).append(qa.key)
    lm.train()
    result = {}
    for kind in sorted(total):
        majority = Counter(answers_by_kind[kind]).most_common(1)[0][1] / total[kind]
        result[kind] = {"accuracy": round(correct[kind] / total[kind], 3), "majority": round(majority, 3),
                        "n": total[kind]}
    return result
