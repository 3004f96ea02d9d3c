"""The stage-0 recipe: its settings, their hash, and the run that makes and checks the shipped stand-ins.

Stage 0 exists only for the tiny preset. LLaVA starts from released checkpoints (CLIP ViT-L/14 and Vicuna, §4.1);
offline on a CPU we have neither, so ``run_stage0`` trains stand-ins on the embedded scenes: a byte-level BPE
tokenizer on their text, the tiny CLIP (``tower``), then the chat LM: the lookup drills (``drill``), phases 1–3
(``lm``, ``vocab``; the shipped recipe skips 1 and 2), binding (``binding``), the review (``review``) and, last,
worked relations (``relations``).
It writes both in bf16 with ``recipe.json``: the settings and their hash, the probe and text-QA checks, and the
sha1 of every weight file. The result is shipped in ``minillava/assets/tiny``; ``minillava quickstart`` starts
from it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from ..conversation import VICUNA_SYSTEM
from ..data.prompts import BRIEF_PROMPTS, DETAIL_PROMPTS
from ..data.shapes import generate_split
from ..data.teachers import describe_scene, reasoning_question, scene_questions
from ..files import file_sha1, write_atomic
from ..model.backbones import image_processor_class, train_tiny_tokenizer
from .drill import colour_lookup_accuracy, draw_drill, drill_chat_lm, drill_scenes, drilled_kinds
from .lm import focus_chat_lm, new_chat_lm, text_qa_accuracy, train_chat_lm
from .probes import probe_features
from .binding import binding_chat_lm
from .relations import relations_chat_lm
from .review import review_chat_lm
from .tower import CLIP_MEAN, CLIP_STD, train_clip
from .vocab import cell_words_chat_lm, in_cell_words


@dataclass
class Stage0Config:
    """Every setting of the stage-0 recipe; the defaults made the shipped stand-ins (``recipe.json``)."""

    seed: int = 0
    image_size: int = 96
    scenes: int = 8000          # base scenes (train bucket only: held-out layouts are never seen)
    vocab_size: int = 600
    clip_steps: int = 800
    clip_batch: int = 128       # base scenes per batch; each brings a hard-negative twin (256 images)
    clip_lr: float = 1e-3
    # 0: the tower learns its patch position embedding, as CLIP; s > 0: a fixed 2-D sine–cosine code times s
    # (``grid_position_code``), which keeps a patch's cell readable through every layer; at s = 4 rather than 2 the
    # patches' cells stay apart in the projected tokens too, and position and relation answers rise (benchmarks/README.md)
    clip_fixed_position: float = 4.0
    lm_steps: int = 0           # phase 1: every kind, the scene as a sentence (0: the drills come first)
    lm_batch: int = 24
    lm_lr: float = 2e-3
    max_length: int = 256
    # phase 2 of the chat LM: short QA dialogues weighted to the kinds phase 1 left at the majority answer
    lm_focus_steps: int = 0             # 0 = no focus phase
    lm_focus_batch: int = 32
    lm_focus_lr: float = 2e-3
    # phase 3: the scene as nine cell words, the text twin of the 3×3 patch tokens
    lm_cells_steps: int = 5000          # 0 = no cell-word phase
    lm_cells_batch: int = 32
    lm_cells_lr: float = 2e-3
    lm_cells_where: bool = True         # each cell word also names its cell: "<top-left:large-red-circle>"
    lm_cells_color: bool = True         # its focus dialogues also drill "What color is the {shape}?"
    # the lookup drills (``drill``): a fresh LM's first lessons, on busy scenes in cell words; then phase 1 (if
    # ``lm_steps``), 2 and 3, the last with a share of drill dialogues kept in its mix
    lm_drill_steps: int = 2000          # "What color is the {shape}?"; 0 = no drills: the LM starts with phase 1
    lm_drill_position_steps: int = 1500  # then "Where is the {color} {shape}?"
    lm_drill_size_steps: int = 0        # then "Is the {color} {shape} large or small?" (version 9)
    lm_drill_relation_steps: int = 2000  # then "Where is the {A} relative to the {B}?"
    lm_drill_replay: float = 0.34       # the share of a later drill's dialogues that ask the kinds drilled before
    lm_drill_batch: int = 64
    lm_drill_lr: float = 1e-3
    lm_drill_min_objects: int = 3
    lm_drill_max_objects: int = 6
    lm_drill_in_cells: float = 0.2      # the share of phase 3's dialogues that are drill dialogues
    # the review (``review``): the forms the LM reads weakest, asked more often, at a lower lr. Run after phase 3 it
    # lifted text QA but not clearly the quickstart; run after binding it lifts both (benchmarks/README.md)
    lm_review_steps: int = 1500         # 0 = no review
    lm_review_batch: int = 32
    lm_review_lr: float = 5e-4
    lm_review_mix: float = 0.3          # the share of its dialogues that are phase 3's
    lm_review_after_binding: bool = True  # False: the review comes between phase 3 and binding (version 11)
    # worked relations (``relations``), after every other phase: relation questions answered with both cells first
    lm_relations_steps: int = 1000      # 0 = no worked relations
    lm_relations_batch: int = 32
    lm_relations_lr: float = 5e-4
    lm_relations_share: float = 0.5     # the share of its dialogues that ask relations; the rest are phase 3's
    # phase 4, binding (``binding``): questions that name an object whose shape another object shares, so only colour
    # and shape together find it
    lm_binding_steps: int = 3200        # 0 = no binding phase; 800 and 1,600 were measured too
    lm_binding_batch: int = 32
    lm_binding_lr: float = 5e-4
    lm_binding_mix: float = 0.3         # the share of its dialogues that are phase 3's
    # every chat-LM phase runs the batch's common system prompt once (same loss, fewer FLOPs; new rounding)
    lm_share_prefix: bool = True
    # the tokenizer's corpus holds the chat template this many times per scene (``corpus``); 0: once in all
    bpe_template_weight: int = 1

    def recipe_version(self) -> int:
        """The latest recipe version this config uses (1: the tower and chat-LM phase 1 only)."""
        off = self._left_out()
        return max([version for version, (switch, _, _) in RECIPE_VERSIONS.items() if not switch.startswith(off)],
                   default=1)

    def hash(self) -> str:
        """Identifies the recipe: the shipped weights record it, and a test compares it with the code's.

        Hashed are the fields of the versions this config uses: an addition left at its ``off`` setting is
        hashed as if it did not exist, so a config that reproduces an earlier version keeps that version's hash
        (``add_lm_phase`` checks a directory against it)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith(self._left_out())}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def _left_out(self) -> tuple[str, ...]:
        """The fields (names or prefixes) of the additions this config leaves at their ``off`` setting."""
        return tuple(governs for switch, off, governs in RECIPE_VERSIONS.values() if getattr(self, switch) == off)


# What each version of the recipe added: (its switch, the switch's setting that reproduces the version before, the
# fields it governs, by name or prefix). Version 1 is the tower and chat-LM phase 1; its fields are always hashed.
RECIPE_VERSIONS = {
    2: ("lm_focus_steps", 0, "lm_focus_"),          # chat-LM phase 2: focus dialogues
    3: ("lm_cells_steps", 0, "lm_cells_"),          # phase 3: cell words (its switches below go with it)
    4: ("lm_cells_where", False, "lm_cells_where"),  # cell words that name their cell
    5: ("lm_cells_color", False, "lm_cells_color"),  # colour questions in the phase-3 focus dialogues
    6: ("lm_share_prefix", False, "lm_share_prefix"),  # the chat LM's system prompt computed once per batch
    7: ("bpe_template_weight", 0, "bpe_template_weight"),  # a tokenizer that has seen the template often
    8: ("lm_drill_steps", 0, "lm_drill_"),          # the lookup drills before every other chat-LM phase
    9: ("lm_drill_size_steps", 0, "lm_drill_size_"),  # a size drill among them
    10: ("clip_fixed_position", 0.0, "clip_fixed_position"),  # the tower's position code fixed, not learned
    11: ("lm_review_steps", 0, "lm_review_"),       # the review of the weakest question forms, after phase 3
    12: ("lm_binding_steps", 0, "lm_binding_"),     # phase 4: find an object by colour and shape together
    13: ("lm_review_after_binding", False, "lm_review_after_binding"),  # the review moved after binding
    14: ("lm_relations_steps", 0, "lm_relations_"),  # worked relations, the last phase
}


def lm_phases(cfg: Stage0Config) -> list[str]:
    """The chat-LM phases after the drills and phase 1 that ``cfg`` switches on, in the order they run."""
    order = ("focus", "cells", "binding", "review", "relations") if cfg.lm_review_after_binding else \
        ("focus", "cells", "review", "binding", "relations")
    return [name for name in order if getattr(cfg, f"lm_{name}_steps")]


def train_lm_phase(name: str, cfg: Stage0Config, lm, scenes, tokenizer, held_out, log=print):
    """Continue ``lm`` with the chat-LM phase ``name`` (one of ``lm_phases``); each starts from the LM before it
    rounded to bf16, so a phase run on a saved recipe and one run from scratch take the same steps."""
    if name == "focus":
        return focus_chat_lm(cfg, lm, scenes, tokenizer, held_out, log)
    if name == "cells":
        also = drill_share(cfg, drill_scenes(cfg)) if cfg.lm_drill_steps else None
        return cell_words_chat_lm(cfg, lm, scenes, tokenizer, held_out, log, also)
    if name == "review":
        return review_chat_lm(cfg, lm, scenes, tokenizer, held_out, log)
    if name == "relations":
        return relations_chat_lm(cfg, lm, scenes, tokenizer, held_out, log)
    return binding_chat_lm(cfg, lm, scenes, tokenizer, held_out, log)


def corpus(scenes, template_weight: int = 0) -> list[str]:
    """The byte-level BPE tokenizer's training text: the chat template's words, the prompts, and every caption,
    description and question–answer pair the teachers write about ``scenes``.

    BPE merges what is frequent. With ``template_weight = k`` the template (system prompt, ``USER:``,
    ``ASSISTANT:``) is in the text ``1 + k × len(scenes)`` times, about as often as the LM will read it, not once;
    with k = 0 the 23-word system prompt takes 67 tokens, with the shipped k = 1 it takes 28."""
    template = [VICUNA_SYSTEM, "USER: ASSISTANT:"]
    texts = [*template, *BRIEF_PROMPTS, *DETAIL_PROMPTS, "Scene:"] + template * (template_weight * len(scenes))
    for record, _, _ in scenes:
        texts += record.captions + [describe_scene(record)]
        rng = random.Random(record.image_id)
        texts += [f"{qa.question} {qa.answer}" for qa in scene_questions(record, rng)]
        qa = reasoning_question(record, rng)
        texts.append(f"{qa.question} {qa.answer}")
    return texts


def recipe_scenes(cfg: Stage0Config):
    """The recipe's training scenes (train bucket) and the held-out ones its checks use (val bucket)."""
    return (generate_split(cfg.scenes, "train", seed=10_000 + cfg.seed, size_px=cfg.image_size),
            generate_split(max(200, cfg.scenes // 20), "val", seed=10_000 + cfg.seed, size_px=cfg.image_size))


def run_stage0(out_dir: str | Path, cfg: Stage0Config | None = None, log=print) -> dict:
    """Train tokenizer, tiny CLIP and tiny chat LM; save them (bf16 safetensors) with ``recipe.json``."""
    cfg = cfg or Stage0Config()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    scenes, held_out = recipe_scenes(cfg)
    tokenizer = train_tiny_tokenizer(corpus(scenes, cfg.bpe_template_weight), cfg.vocab_size)
    seconds = {"scenes_and_tokenizer": time.perf_counter() - start}

    probes, seconds["clip"] = train_tower(out_dir, cfg, scenes, held_out, tokenizer, log)

    lm = None
    if cfg.lm_drill_steps:
        t = time.perf_counter()
        lm = drill_chat_lm(cfg, new_chat_lm(cfg, tokenizer), drill_scenes(cfg), tokenizer, held_out, log)
        seconds["lm_drill"] = time.perf_counter() - t
    if cfg.lm_steps or lm is None:
        t = time.perf_counter()
        lm = train_chat_lm(cfg, scenes, tokenizer, log, lm=lm)
        seconds["lm"] = time.perf_counter() - t
    phase1_qa = None
    for name in lm_phases(cfg):
        if name == "focus":
            phase1_qa = text_qa_accuracy(lm, tokenizer, held_out)
            log(json.dumps({"stage": "0b", "text_qa_phase1": phase1_qa}))
        t = time.perf_counter()
        lm = train_lm_phase(name, cfg, lm, scenes, tokenizer, held_out, log)
        seconds[f"lm_{name}"] = time.perf_counter() - t
    qa = text_qa_report(cfg, lm, tokenizer, held_out)
    log(json.dumps({"stage": "0b", **qa}))

    lm.to(torch.bfloat16).save_pretrained(out_dir / "lm")
    tokenizer.save_pretrained(out_dir / "lm")
    seconds["total"] = time.perf_counter() - start
    recipe = {"config": dataclasses.asdict(cfg), "config_hash": cfg.hash(), "seconds": {k: round(v, 1) for k, v in
              seconds.items()}, "probes": probes, **qa, "torch": torch.__version__,
              "machine": "2 CPU cores" if torch.get_num_threads() <= 2 else f"{torch.get_num_threads()} CPU threads"}
    if phase1_qa:
        recipe["text_qa_phase1"] = phase1_qa
    recipe["files"] = shipped_file_hashes(out_dir)
    write_atomic(out_dir / "recipe.json", json.dumps(recipe, indent=1))
    return recipe


# the settings the tokenizer and the tower depend on (names or prefixes); the chat LM's do not change them
TOWER_FIELDS = ("seed", "image_size", "scenes", "vocab_size", "clip_", "bpe_template_weight")


def tower_hash(cfg: Stage0Config) -> str:
    """Identifies the tower a config trains: the hash of ``TOWER_FIELDS`` only."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith(TOWER_FIELDS)}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def train_tower(out_dir: Path, cfg: Stage0Config, scenes, held_out, tokenizer, log=print) -> tuple[dict, float]:
    """Stage 0a: the tiny CLIP, saved (vision tower in bf16, image processor) as soon as it is trained, with
    ``tower.json`` (its ``tower_hash``, probes and seconds). A later run into the same directory whose tower
    settings are the same — one resumed after an interruption, or one that changes only the chat LM — reuses it
    rather than spend the ~17 min again. Returns (probes, seconds spent training it)."""
    from transformers import CLIPVisionModel
    marker = out_dir / "tower.json"
    if marker.is_file() and (done := json.loads(marker.read_text()))["tower_hash"] == tower_hash(cfg):
        log(json.dumps({"stage": "0a", "reused": str(out_dir / "vision"), "probes": done["probes"]}))
        return done["probes"], done["seconds"]
    t = time.perf_counter()
    clip = train_clip(cfg, scenes, tokenizer, log)
    seconds = time.perf_counter() - t
    probes = probe_features(clip.vision_model, scenes[:2000], held_out, cfg.image_size)
    log(json.dumps({"stage": "0a", "probes": probes}))
    vision = CLIPVisionModel(clip.config.vision_config)
    vision.load_state_dict(clip.vision_model.state_dict())
    (out_dir / "vision").mkdir(parents=True, exist_ok=True)
    vision.to(torch.bfloat16).save_pretrained(out_dir / "vision")
    image_processor_class()(size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size,
                       "width": cfg.image_size}, image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(out_dir / "vision")
    write_atomic(marker, json.dumps({"tower_hash": tower_hash(cfg), "probes": probes, "seconds": round(seconds, 1)}))
    return probes, seconds


def add_lm_phase(out_dir: str | Path, cfg: Stage0Config, log=print, device: str = "cpu") -> dict:
    """Run only the last chat-LM phase ``cfg`` switches on (in the order of ``lm_phases``) on a recipe directory
    made by the same config without it; its tower, tokenizer and earlier phases are kept.

    Equal to ``run_stage0(out_dir, cfg)`` from scratch, because each phase starts from the LM before it rounded to
    bf16 — which is what the directory holds — and uses the same scenes and seeds (on the same kind of device); it
    saves the hour of retraining the tower and the earlier phases. Recipe 641b05a49ece's LM (mix first, no drills) got
    its focus and cell-word phases this way (the latter on a GPU: ``device="cuda"``), the recipe-13 LM its review
    after binding, and the shipped recipe-14 LM its worked relations (``benchmarks/README.md``)."""
    from transformers import AutoTokenizer
    out_dir = Path(out_dir)
    recipe = json.loads((out_dir / "recipe.json").read_text())
    phases = lm_phases(cfg)
    if not phases:
        raise ValueError(f"{out_dir}: this config has no chat-LM phase after phase 1 to add")
    last = phases[-1]
    before = dataclasses.replace(cfg, **{f"lm_{last}_steps": 0})
    if recipe["config_hash"] != before.hash():
        raise ValueError(f"{out_dir}: recipe {recipe['config_hash']} is not this config without its {last} phase")
    scenes, held_out = recipe_scenes(cfg)
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "lm")
    words = len(tokenizer)
    lm = LlamaForCausalLM.from_pretrained(out_dir / "lm", dtype=torch.float32).to(device)
    t = time.perf_counter()
    if last == "focus":
        recipe["text_qa_phase1"] = recipe["text_qa"]
    lm = train_lm_phase(last, cfg, lm, scenes, tokenizer, held_out, log)
    recipe["seconds"][f"lm_{last}"] = round(time.perf_counter() - t, 1)
    # what the seconds mean
    recipe.setdefault("machines", {})[f"lm_{last}"] = f"{machine_name(device)}, torch {torch.__version__}"
    recipe["seconds"]["total"] = round(recipe["seconds"]["total"] + recipe["seconds"][f"lm_{last}"], 1)
    recipe.update(text_qa_report(cfg, lm, tokenizer, held_out))
    recipe.update(config=dataclasses.asdict(cfg), config_hash=cfg.hash())
    lm.to(torch.bfloat16).save_pretrained(out_dir / "lm")
    if len(tokenizer) != words:  # the phase added cell words; otherwise the saved tokenizer stays as the recipe wrote it
        tokenizer.save_pretrained(out_dir / "lm")
    recipe["files"] = shipped_file_hashes(out_dir)
    write_atomic(out_dir / "recipe.json", json.dumps(recipe, indent=1))
    return recipe


def machine_name(device: str = "cpu") -> str:
    """What a phase's seconds were measured on: the GPU, or the CPU's model, the kernels torch runs and the threads."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    cpu = names[0] if names else (platform.processor() or "CPU")
    return f"{cpu} on {torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} CPU threads"


def drill_share(cfg: Stage0Config, busy: list) -> tuple:
    """Phase 3's ``also``: the share of its dialogues that are drill dialogues (every drilled kind alike), and how
    to draw one."""
    kinds = drilled_kinds(cfg)
    return cfg.lm_drill_in_cells, draw_drill(busy, kinds, [1] * len(kinds), cfg.lm_cells_where)


def text_qa_report(cfg: Stage0Config, lm, tokenizer, held_out) -> dict:
    """The recipe's check of the chat LM: text-only QA with the scene as a sentence, and as cell words (with the
    drill: also its teacher-forced colour lookup on multi-object scenes)."""
    report = {"text_qa": text_qa_accuracy(lm, tokenizer, held_out)}
    if cfg.lm_cells_steps:
        report["text_qa_cells"] = text_qa_accuracy(
            lm, tokenizer, held_out, in_words=functools.partial(in_cell_words, where=cfg.lm_cells_where))
    if cfg.lm_drill_steps:
        report["colour_lookup"] = colour_lookup_accuracy(lm, tokenizer, held_out, cfg.lm_cells_where)
    return report


def shipped_file_hashes(out_dir: str | Path) -> dict[str, str]:
    """sha1 of every weight file, so a check can tell when shipped weights and recipe.json part ways."""
    out_dir = Path(out_dir)
    return {str(p.relative_to(out_dir)): file_sha1(p)
            for p in sorted(out_dir.rglob("*.safetensors"))}