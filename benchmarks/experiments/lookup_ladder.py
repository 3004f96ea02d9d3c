"""The colour-of-the-named-shape lookup in isolation, grown toward the real recipe one feature at a time.

A stand-alone toy (torch + transformers only) in the shipped chat LM's shape (Llama, 4 layers, 192 wide, 6 heads):
nine cell tokens (cell + size + colour + shape, or empty; each row started as the mean of its factors, as
``stage0.add_cell_words`` starts them), then a question about one object's colour; 1–4 objects with distinct
shapes; AdamW 1e-3, betas (0.9, 0.98), clipping 1.0, as ``stage0.fit_lm``. Features, switched on by letters:

    S  a 70-token constant prefix before the cells (the Vicuna system prompt is 68 tokens in the shipped BPE)
    A  the answer as a sentence, "THE <shape> IS <colour> END", loss on every token of it (as the teacher writes it)
    Q  the question in words, "WHAT COLOR IS THE <shape> ?", instead of two tokens "WHAT_COLOR <shape>"

    BATCH=64 python benchmarks/experiments/lookup_ladder.py S 1200       # features, steps [, lr]
    BATCH=64 PREFIX_FROM=700 python benchmarks/experiments/lookup_ladder.py S 1200   # S only from step 700 on
                                                                   # (a curriculum: the lookup first, then the prompt)

Other knobs (environment): PREFIX_LEN (S's length, default 70), OBJECTS=3-6 (objects per *training* scene;
held-out scenes keep 1–4), SEED (the model's initialisation and the training scenes), WIDTH / HEADS / LAYERS (the
model's shape), THREADS (default 2).

    BATCH=64 OBJECTS=3-6 python benchmarks/experiments/lookup_ladder.py Q 1500     # busier training scenes

Prints held-out accuracy (600 scenes; "multi": scenes of 2–4 objects) every 100 steps; stops at 0.99.
"""
import os
import random
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(int(os.environ.get("THREADS", 2)))
features = set(sys.argv[1].split(",")) if len(sys.argv) > 1 and sys.argv[1] != "-" else set()
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
batch_size = int(os.environ.get("BATCH", 32))
prefix_from = int(os.environ.get("PREFIX_FROM", 0))  # training samples carry S only from this step (eval always)
# objects per training scene (held-out scenes always have 1-4) and the model's shape
n_min, n_max = (int(v) for v in os.environ.get("OBJECTS", "1-4").split("-"))
width, heads, layers = (int(os.environ.get(k, d)) for k, d in (("WIDTH", 192), ("HEADS", 6), ("LAYERS", 4)))
seed = int(os.environ.get("SEED", 0))
torch.manual_seed(seed)
SHAPES = ["circle", "square", "triangle", "star", "cross", "hexagon"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SIZES = ["large", "small"]
OBJECTS = [(s, c, z) for s in SHAPES for c in COLOURS for z in SIZES]
VOCAB: dict = {}


def tid(key) -> int:
    return VOCAB.setdefault(key, len(VOCAB))


for cell in range(9):
    tid(("cell", cell, None))
    for o in OBJECTS:
        tid(("cell", cell, o))
for s in SHAPES:
    tid(("shape", s))
for c in COLOURS:
    tid(("colour", c))
for z in SIZES:
    tid(("size", z))
for word in ["WHAT_COLOR", "ANS", "WHAT", "COLOR", "IS", "THE", "?", "END", "PAD", "SIZE", "OR", "LARGE_Q"] + \
        [f"sys{i}" for i in range(40)]:  # three words unused here (a size question was tried too)
    tid(word)
PREFIX = [tid(f"sys{i % 40}") for i in range(int(os.environ.get("PREFIX_LEN", 70)))]


def sample(rng: random.Random, prefix: bool = True, objects: tuple[int, int] = (1, 4)):
    """(prompt ids, answer ids, number of objects, index of the colour token in prompt + answer)."""
    n = rng.randint(*objects)
    scene = {cell: (s, rng.choice(COLOURS), rng.choice(SIZES)) for cell, s in zip(rng.sample(range(9), n),
                                                                                    rng.sample(SHAPES, n))}
    shape, colour, _ = scene[rng.choice(list(scene))]
    cells = [tid(("cell", k, scene.get(k))) for k in range(9)]
    question = [tid(w) for w in ("WHAT", "COLOR", "IS", "THE")] + [tid(("shape", shape)), tid("?")] if "Q" in features \
        else [tid("WHAT_COLOR"), tid(("shape", shape))]
    prompt = (PREFIX if "S" in features and prefix else []) + cells + question + [tid("ANS")]
    answer = [tid("THE"), tid(("shape", shape)), tid("IS"), tid(("colour", colour)), tid("END")] if "A" in features \
        else [tid(("colour", colour))]
    return prompt, answer, n, len(prompt) + (3 if "A" in features else 0)


config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=width, intermediate_size=width * 8 // 3,
                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
                     tie_word_embeddings=False)
model = LlamaForCausalLM(config)
factor: dict = {}


def factor_vector(key) -> torch.Tensor:
    if key not in factor:
        factor[key] = torch.randn(config.hidden_size) * 0.02
    return factor[key]


with torch.no_grad():  # cell rows start as mean(what) + where/2, the question's shape token as its factor
    table = model.get_input_embeddings().weight
    for key, i in VOCAB.items():
        if isinstance(key, tuple) and key[0] == "cell":
            _, cell, o = key
            where = factor_vector(("cell", cell)) / 2
            what = sum(factor_vector((k, v)) for k, v in zip(("shape", "colour", "size"), o)) / 3 if o \
                else factor_vector("empty")
            table[i] = where + what
        elif isinstance(key, tuple) and key[0] == "shape":
            table[i] = factor_vector(key)


def batch(rng: random.Random, prefix: bool):
    rows = [sample(rng, prefix, (n_min, n_max)) for _ in range(batch_size)]
    length = max(len(p) + len(a) for p, a, _, _ in rows)
    ids = torch.full((batch_size, length), tid("PAD"))
    labels = torch.full((batch_size, length), -100)
    for r, (p, a, _, _) in enumerate(rows):
        ids[r, :len(p) + len(a)] = torch.tensor(p + a)
        labels[r, len(p):len(p) + len(a)] = torch.tensor(a)
    return ids, labels


optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
rng, test_rng = random.Random(1 + seed), random.Random(99)
test = [sample(test_rng) for _ in range(600)]
start = time.time()
for step in range(1, steps + 1):
    ids, labels = batch(rng, step > prefix_from)
    loss = model(input_ids=ids, labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if step % 100 == 0:
        right = multi = n_multi = 0
        with torch.no_grad():
            for prompt, answer, n, at in test:  # teacher-forced up to the colour token
                seq = prompt + answer[:at - len(prompt)]
                good = model(input_ids=torch.tensor([seq])).logits[0, -1].argmax().item() == answer[at - len(prompt)]
                right += good
                if n > 1:
                    multi, n_multi = multi + good, n_multi + 1
        print(f"{sys.argv[1] if len(sys.argv) > 1 else '-'} batch {batch_size} step {step} {time.time() - start:.0f}s "
              f"loss {loss.item():.3f} acc {right / len(test):.3f} multi {multi / n_multi:.3f}", flush=True)
        if right / len(test) > 0.99 and step > prefix_from:
            break
