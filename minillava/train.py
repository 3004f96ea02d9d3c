"""§4.2 training: one loop for both stages.

    stage 1  feature alignment      trainable: W            frozen: g, f_φ     template: plain
             with stage1_cell_word_steps (ours; the tiny preset): then W onto the stand-in LM's cell words
             (align.py); the model directory's captions_only/ keeps W as the captions left it
    stage 2  end-to-end tuning      trainable: W and f_φ    frozen: g          template: vicuna_v1 or the LM's chat

Which parameters train is the model's freeze policy (``model/freeze.py``). Each step minimises eq. 3: the summed
-log p of the answer tokens of the global batch, divided by their count (``train_step``). Recipe: AdamW, cosine
schedule with warmup, gradient accumulation and clipping, bf16 autocast on CUDA. Every ``save_every`` steps a
checkpoint (``checkpoint.py``) holds the trained weights, the optimiser, the scheduler, RNG states and the step;
data order is a function of (seed, step), so ``resume`` continues exactly. Under ``torchrun`` each process takes a
disjoint slice of every global batch and DDP averages gradients.

Over 300 lines because a stage reads top to bottom in one file: the recipe's parts (devices, optimiser, schedule),
the loop (``train_stage`` → ``train_step``), then ``run_stage``: data → model → loop → model directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint
from .config import Config, StageConfig
from .data.dataset import InstructDataset
from .faults import fault_point
from .model import lora
from .model.freeze import set_trainable, trains_lm


# --- distributed helpers (a no-op in one process) ------------------------------------------------------------

def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[int, int]:
    """Join the process group that torchrun / accelerate launch describe in the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist_info()


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


# --- optimiser, schedule, memory and speed -----------------------------------------------------------------

def cosine_with_warmup(total_steps: int, warmup_ratio: float):
    warmup = max(1, math.ceil(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def make_optimizer(params, lr: float, weight_decay: float, device: str) -> torch.optim.AdamW:
    fused = device.startswith("cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), fused=fused or None)


def compile_decoder(decoder: torch.nn.Module):
    """``torch.compile`` the LM decoder in place (state-dict keys unchanged); returns a function that undoes it.

    Compilation happens at the first forward; if it fails there (no C++ compiler, an unsupported op) the error
    says so in one line and names the way out, instead of a page of inductor internals.
    """
    from torch._dynamo.exc import TorchDynamoException  # InductorError and BackendCompilerFailed derive from it
    from torch._inductor.exc import CppCompileError

    errors = (TorchDynamoException, CppCompileError)
    compiled = torch.compile(decoder._call_impl)

    def guarded(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except errors as e:
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
            raise RuntimeError(f"compile=true: torch.compile failed on this machine ({e.__class__.__name__}: "
                               f"{first}); train with compile=false") from e
    decoder._compiled_call_impl = guarded  # what nn.Module.compile() sets; __call__ uses it when present

    def undo() -> None:
        decoder._compiled_call_impl = None
    return undo


def enable_checkpointing(lm) -> None:
    """Recompute each decoder layer in the backward instead of keeping its activations (the LM must be in train
    mode, so stage 2 only): memory for about a third more compute."""
    enable = getattr(lm, "activation_checkpointing_enable", None)  # transformers 5; 4.x: gradient_checkpointing_...
    if enable is not None:
        enable({"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def to_device(t: torch.Tensor | int, device: str) -> torch.Tensor | int:
    """Host → device; on CUDA through pinned memory so the copy overlaps with compute. Plain numbers (a batch's
    ``shared_prefix``) stay as they are."""
    if not isinstance(t, torch.Tensor):
        return t
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# --- the loop -----------------------------------------------------------------------------------------------

class NonFiniteLoss(RuntimeError):
    """A step whose loss or gradient norm is not a finite number, or which has no answer token to learn from."""


@dataclass
class Trainer:
    """What every step of one stage needs; made once by ``prepare``."""
    cfg: Config
    stage: int
    out_dir: Path
    ddp_model: torch.nn.Module        # the MiniLlava, or its DistributedDataParallel wrapper across processes
    params: list[torch.nn.Parameter]  # what the stage trains (model/freeze.py)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    autocast: contextlib.AbstractContextManager
    device: str
    rank: int
    world: int
    micro: int                        # samples per forward: batch / (processes × grad_accum)
    undo_compile: Callable[[], None]

    def log(self, message: str) -> None:
        if self.rank == 0:
            from tqdm.auto import tqdm
            tqdm.write(message)

    def sync(self, last: bool):
        """DDP all-reduces gradients during backward; only the last micro-batch of a step needs to."""
        return self.ddp_model.no_sync() if self.world > 1 and not last else contextlib.nullcontext()

    def all_sum(self, value: float) -> float:
        if self.world > 1:
            total = torch.tensor([value], device=self.device)
            torch.distributed.all_reduce(total)
            value = total.item()
        return value


def prepare(model, cfg: Config, stage: int, out_dir: Path) -> Trainer:
    """Device and processes, the stage's freeze policy (LoRA attached first if asked), AdamW and its schedule."""
    device = resolve_device(cfg.device)
    rank, world = init_distributed(device)
    settings = cfg.stage(stage)
    if settings.batch % (world * cfg.grad_accum):
        raise ValueError(f"{settings.field('batch')}={settings.batch} must divide by processes × grad_accum = "
                         f"{world} × {cfg.grad_accum}")
    if trains_lm(stage) and cfg.lora_r:
        lora.apply_lora(model, cfg)  # stage 2 with low-rank adapters instead of updating all of f_φ
    model.to(device)
    params = set_trainable(model, stage)
    model.lm.train(trains_lm(stage))
    if cfg.gradient_checkpointing and trains_lm(stage):  # keep only each layer's input (minillava plan)
        enable_checkpointing(model.lm)
    optimizer = make_optimizer(params, settings.lr, cfg.weight_decay, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(settings.steps, cfg.warmup_ratio))
    undo_compile = compile_decoder(model.lm.get_decoder()) if cfg.compile else (lambda: None)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") and cfg.bf16 else \
        torch.autocast("cpu", enabled=False)
    return Trainer(cfg, stage, out_dir, ddp_model, params, optimizer, scheduler, autocast, device, rank,
                   world, settings.batch // (world * cfg.grad_accum), undo_compile)


def train_stage(model, dataset: InstructDataset, cfg: Config, stage: int, out_dir: str | Path, *,
                resume: bool = False, eval_fn=None, log_file: str = "log.jsonl", progress: bool = True) -> dict:
    """Train ``stage`` for ``cfg.stage(stage).steps`` optimiser steps; returns a summary (losses, seconds).

    ``eval_fn(model) -> dict``, when given, runs every ``eval_every`` steps; its numbers join that step's log line.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = cfg.stage(stage)
    t = prepare(model, cfg, stage, out_dir)
    start = checkpoint.resume(out_dir, cfg, stage, model, t.optimizer, t.scheduler, t.log) if resume else 0
    log = StepLog(out_dir / log_file, settings, start, cfg.log_every, t.rank, progress)
    losses = []
    for step in log.bar:
        indices = dataset.batch_indices(step, settings.batch, cfg.seed, cfg.group_by_length)  # the global batch
        n_answer, n_tokens = token_counts(dataset, indices)  # every process counts the whole global batch
        loss, grad_norm = train_step(t, dataset, step, indices, n_answer)
        losses.append(loss)
        done = step + 1
        due = eval_fn is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == settings.steps)
        log.write(done, loss, grad_norm, t.scheduler.get_last_lr()[0], n_tokens,
                  (lambda: eval_fn(model)) if due else None)
        if t.rank == 0 and (done % cfg.save_every == 0 or done == settings.steps):
            checkpoint.save(out_dir, done, checkpoint.model_weights(model, include_lm=trains_lm(stage)), t.optimizer,
                            t.scheduler, {"stage": stage, "seed": cfg.seed, "config": cfg.to_dict()},
                            cfg.keep_checkpoints)
    t.undo_compile()  # evaluation and generation after training run the plain decoder
    return {"stage": stage, "steps": settings.steps, "first_loss": losses[0] if losses else None,
            "last_loss": sum(losses[-20:]) / max(1, len(losses[-20:])) if losses else None,
            "seconds": time.perf_counter() - log.t0}


def train_step(t: Trainer, dataset: InstructDataset, step: int, indices: list[int],
               n_answer: int) -> tuple[float, torch.Tensor]:
    """One optimiser step on eq. 3 (§4.2): L = Σ -log p(x_i | X_v, X_instruct, x_<i) over the ``n_answer`` answer
    tokens x_i of the global batch ``indices``, divided by ``n_answer`` — so any split of the batch over processes
    and micro-batches gives the same update. Returns (L, gradient norm before clipping).
    """
    require_answers(t, step, indices, n_answer)
    summed = 0.0
    for batch, last in micro_batches(t, dataset, indices[t.rank::t.world]):
        with t.sync(last), t.autocast:
            loss_sum, _ = t.ddp_model(**batch)  # MiniLlava.forward: (Σ -log p over this micro-batch's answers, count)
            loss = loss_sum * t.world / n_answer  # DDP averages over processes; undo it to get sum / n_answer
        loss.backward()
        summed += loss_sum.item()
    mean_loss = t.all_sum(summed) / n_answer
    grad_norm = clip_and_check(t, step, mean_loss)
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return mean_loss, grad_norm


def token_counts(dataset: InstructDataset, indices: list[int]) -> tuple[int, int]:
    """(answer tokens, all tokens) of the samples ``indices``: eq. 3's divisor, and the throughput's numerator.
    A token is an answer token when the next-token label predicting it is not -100."""
    items = [dataset.items[i] for i in indices]
    return sum(int((x["labels"][1:] != -100).sum()) for x in items), sum(len(x["input_ids"]) for x in items)


def require_answers(t: Trainer, step: int, indices: list[int], n_answer: int) -> None:
    """A batch without answer tokens would make eq. 3 0 / 0: a data bug, never something to train on."""
    if n_answer == 0:
        raise NonFiniteLoss(f"stage {t.stage} step {step}: every label of the batch is masked (-100), so no "
                            f"answer token carries loss; samples {indices[:8]}")


def micro_batches(t: Trainer, dataset: InstructDataset, mine: list[int]):
    """This process's share of the global batch in ``grad_accum`` pieces on the device, each with a flag that is
    True for the last (whose backward synchronises the gradients)."""
    for k in range(t.cfg.grad_accum):
        part = mine[k * t.micro:(k + 1) * t.micro]
        if t.cfg.pack_sequences:
            rows = dataset.collate_packed(part, t.cfg.max_length)
        else:  # gradient checkpointing makes transformers drop the KV cache that a shared prefix travels in
            rows = dataset.collate(part, share_prefix=t.cfg.share_prefix and not t.cfg.gradient_checkpointing)
        batch = {key: to_device(v, t.device) for key, v in rows.items()}
        fault_point("train_batch")
        yield batch, k == t.cfg.grad_accum - 1


def clip_and_check(t: Trainer, step: int, mean_loss: float) -> torch.Tensor:
    """Clip the gradient norm; a loss or norm that is not finite, or a loss of exactly 0, stops the run before the
    step is applied, so the last checkpoint stays good. Returns the norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(t.params, t.cfg.clip_grad)
    if not (math.isfinite(mean_loss) and torch.isfinite(grad_norm)):
        raise NonFiniteLoss(f"stage {t.stage} step {step}: loss {mean_loss} / gradient norm {grad_norm.item()} "
                            f"is not finite; the last good checkpoint is kept in {t.out_dir / 'checkpoints'}")
    if mean_loss == 0.0:
        raise NonFiniteLoss(f"stage {t.stage} step {step}: loss is exactly 0 — every label masked?")
    fault_point("train_step")  # gradients computed, not yet applied
    return grad_norm


class StepLog:
    """``log.jsonl`` and the progress bar, on rank 0: loss, lr, gradient norm, throughput and any eval numbers.

    A fresh run starts the file anew; a resumed one drops what was logged after the checkpoint it resumes from.
    """

    def __init__(self, path: Path, settings: StageConfig, start: int, every: int, rank: int, progress: bool):
        from tqdm.auto import tqdm

        if start == 0 and rank == 0:
            path.unlink(missing_ok=True)  # a fresh run into an old directory must not append to its curve
        elif rank == 0:
            checkpoint.rewind(path, settings.number, start)  # steps logged after the checkpoint are redone
        self.path, self.settings, self.start, self.every, self.rank = path, settings, start, every, rank
        self.t0, self.tokens = time.perf_counter(), 0
        self.bar = tqdm(range(start, settings.steps), desc=f"stage {settings.number}", initial=start,
                        total=settings.steps, disable=not progress or rank != 0)

    def write(self, done: int, loss: float, grad_norm: torch.Tensor, lr: float, tokens: int,
              evaluate: Callable[[], dict] | None) -> None:
        self.tokens += tokens
        # the first step is always logged: its loss is where the stage starts (measured before the first update)
        if self.rank != 0 or not (done % self.every == 0 or done in (1, self.settings.steps) or evaluate):
            return
        elapsed = time.perf_counter() - self.t0
        record = {"stage": self.settings.number, "step": done, "loss": round(loss, 5), "lr": lr,
                  "grad_norm": round(float(grad_norm), 4),
                  "samples_per_s": round((done - self.start) * self.settings.batch / elapsed, 2),
                  "tokens_per_s": round(self.tokens / elapsed, 1)}
        if evaluate:
            record.update(evaluate())
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        fault_point("log_written")
        self.bar.set_postfix(loss=f"{loss:.3f}")


# --- one stage end to end: data → model → loop → model directory -----------------------------------------

def stage_samples(cfg: Config, stage: int, data_dir: Path, split: str | None = None) -> tuple[list[dict], str]:
    """Stage 1: (image, brief prompt, caption) from the train split; stage 2: the §3 instruction JSON.

    ``split`` other than the training split (e.g. "val") gives held-out samples made by the rule teacher.
    """
    from .data.dataset import caption_samples
    from .data.llava_json import read_llava_json
    from .data.records import load_split
    from .data.teachers import generate_rule_instructions, instructions_file, teacher_options

    split = split or cfg.data_split
    if stage == 1:
        return caption_samples(load_split(data_dir, split), cfg.seed, cells=cfg.stage1_cell_captions), \
            f"{data_dir} {split} captions"
    if split != cfg.data_split:
        return generate_rule_instructions(load_split(data_dir, split), seed=cfg.seed, **teacher_options(cfg)), \
            f"{data_dir} {split} rule"
    path = cfg.instruct_json or str(instructions_file(data_dir, cfg.data_split, **teacher_options(cfg)))
    samples = read_llava_json(path)
    wanted = set(cfg.stage2_types.split(","))
    return [s for s in samples if s.get("type", "conv") in wanted], path


def run_stage(cfg: Config, stage: int, out_dir: str | Path, *, resume: bool = False, model=None, processor=None,
              features: dict | None = None, progress: bool = True) -> tuple[object, dict]:
    """Train one stage from ``cfg`` and write a model directory to ``out_dir``; returns (model, summary)."""
    from .model.build import build_model, save_model

    data_dir = Path(cfg.data_dir)
    if model is None:
        model, processor = build_model(cfg)
        if cfg.init_from:  # e.g. stage 2 starts from stage 1's projector
            checkpoint.load_weights(model, Path(cfg.init_from) / "model.safetensors", cfg)
    if stage == 1 and cfg.stage1_cell_word_steps:  # before the captions train, not after: the fit needs cell words
        from .align import require_cell_words
        require_cell_words(model.tokenizer)
    image_features = feature_source(model, processor, cfg, progress)
    check_max_length(cfg, model)
    samples, source = stage_samples(cfg, stage, data_dir)
    dataset = InstructDataset(samples, model.tokenizer, dataset_template(cfg, stage, model.tokenizer),
                              image_tokens=model.num_image_tokens, max_length=cfg.max_length, source=source)
    if dataset.truncated:
        print(f"warning: {dataset.truncated} of {len(dataset)} samples were longer than max_length="
              f"{cfg.max_length} and were truncated")
    missing = [n for n in dataset.images if features is None or n not in features]
    if missing:  # g is frozen in both stages, so Z_v is computed once per image and reused every epoch
        new = image_features(missing)
        features = {**(features or {}), **dict(zip(missing, new))}
    dataset.attach_features(torch.stack([features[name] for name in dataset.images]))
    eval_fn = held_out_eval(cfg, stage, model, image_features)
    summary = train_stage(model, dataset, cfg, stage, out_dir, resume=resume, eval_fn=eval_fn, progress=progress)
    if stage == 1 and cfg.stage1_cell_word_steps:  # W onto the LM's cell words (ours; align.py)
        from .align import CAPTIONS_ONLY, align_to_cell_words
        from .data.records import load_split
        if dist_info()[0] == 0:  # W as the paper's stage 1 leaves it, for a reader to set beside the fitted one
            save_model(model, replace(cfg, stage1_cell_word_steps=0), out_dir / CAPTIONS_ONLY, include_lm=False,
                       extra={"stage": stage})
        summary["cell_words"] = align_to_cell_words(model, features, load_split(data_dir, cfg.data_split),
                                                    cfg.stage1_cell_word_steps, cfg.stage1_batch, cfg.seed,
                                                    cfg.stage1_cell_word_ce)
    if dist_info()[0] == 0:
        save_model(model, cfg, out_dir, include_lm=trains_lm(stage), extra={"stage": stage})
    summary["features"], summary["processor"] = features, processor
    return model, summary


def held_out_eval(cfg: Config, stage: int, model, image_features):
    """The eval hook of ``train_stage``: the answer-token loss on up to 128 samples of the val split, or None when
    ``eval_every`` is 0 or there is no val split."""
    data_dir = Path(cfg.data_dir)
    if not cfg.eval_every or not (data_dir / "annotations" / "captions_val.json").is_file():
        return None
    samples, source = stage_samples(cfg, stage, data_dir, split="val")
    val = InstructDataset(samples[:128], model.tokenizer, dataset_template(cfg, stage, model.tokenizer),
                          image_tokens=model.num_image_tokens, max_length=cfg.max_length, source=source)
    val.attach_features(image_features(val.images))
    return lambda m: {"val_loss": round(validation_loss(m, val), 5)}


def feature_source(model, processor, cfg: Config, progress: bool = True):
    """A function names → Z_v (n, N, Dv) for images under ``data_dir/images``: computed by the frozen tower, or
    read from the disk cache in ``cfg.feature_cache_dir`` (misses computed and stored) when that is set."""
    from .data.dataset import compute_features

    root = Path(cfg.data_dir) / "images"

    def compute(names: list[str]) -> torch.Tensor:
        return compute_features(model, root, names, processor, progress=progress, device=resolve_device(cfg.device))
    if not cfg.feature_cache_dir:
        return compute
    from .data.feature_cache import FeatureCache

    cache = FeatureCache.for_model(cfg.feature_cache_dir, model, processor, name=cfg.vision_name,
                                   dtype=cfg.feature_cache_dtype)

    def cached(names: list[str]) -> torch.Tensor:
        out = cache.get(root, names, compute)
        if progress and dist_info()[0] == 0:
            print(f"feature cache {cache.dir}: {cache.hits} read, {cache.misses} computed")
        return out
    return cached


def check_max_length(cfg: Config, model) -> None:
    """``max_length`` beyond the LM's positions would fail deep inside torch (or quietly degrade): refuse it here."""
    from .config import ConfigError

    limit = getattr(model.lm.config, "max_position_embeddings", None)
    if limit and cfg.max_length > limit:
        raise ConfigError(f"config field 'max_length' is {cfg.max_length}, but the LM {cfg.lm_name!r} has only "
                          f"{limit} positions (max_position_embeddings)")


def dataset_template(cfg: Config, stage: int, tokenizer=None):
    """The stage's template; ``chat`` is read off ``tokenizer``'s own chat template."""
    from .conversation import get_template
    return get_template(cfg.stage(stage).template, tokenizer)


@torch.no_grad()
def validation_loss(model, dataset: InstructDataset, batch_size: int = 32) -> float:
    """Mean answer-token loss over a held-out dataset (the model's train/eval mode is restored)."""
    was_training = model.lm.training
    model.eval()
    device = str(next(model.parameters()).device)
    total, count = 0.0, 0
    for i in range(0, len(dataset), batch_size):
        rows = dataset.collate(list(range(i, min(i + batch_size, len(dataset)))), share_prefix=True)
        loss_sum, n = model(**{k: to_device(v, device) for k, v in rows.items()})
        total, count = total + loss_sum.item(), count + n
        fault_point("eval")
    model.lm.train(was_training)
    return total / max(count, 1)
