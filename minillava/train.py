"""§4.2 training: one loop for both stages.

    stage 1  feature alignment      trainable: W            frozen: g, f_φ     template: plain
    stage 2  end-to-end tuning      trainable: W and f_φ    frozen: g          template: vicuna_v1 or the LM's chat

Recipe: AdamW, cosine schedule with warmup, gradient accumulation and clipping, bf16 autocast on CUDA.
Every ``save_every`` steps a checkpoint (safetensors + JSON) holds the trainable weights, the optimiser, the
scheduler, RNG states and the step; data order is a function of (seed, step), so ``resume`` continues exactly.
Under ``torchrun`` each process takes a disjoint slice of every global batch and DDP averages gradients.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import Config
from .data.dataset import InstructDataset
from .model import lora
from .faults import fault_point

STAGES = {1: dict(train_lm=False), 2: dict(train_lm=True)}


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


# --- freeze policy, optimiser, schedule -------------------------------------------------------------------

def set_trainable(model, stage: int) -> list[torch.nn.Parameter]:
    """Vision always frozen; the LM trains only in stage 2 (with LoRA, only its adapter); W always trains."""
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(STAGES[stage]["train_lm"])
    model.projector.requires_grad_(True)
    if STAGES[stage]["train_lm"] and lora.has_lora(model.lm):
        lora.mark_trainable(model)  # A, B and W train; f_φ's own weights stay frozen
    return [p for p in model.parameters() if p.requires_grad]


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


def to_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """Host → device; on CUDA through pinned memory so the copy overlaps with compute."""
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# --- checkpoints --------------------------------------------------------------------------------------------

def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: Path, step: int, weights: dict, optimizer, scheduler, meta: dict, keep: int) -> Path:
    """Write ``checkpoints/step_N`` atomically: into a temporary directory, fsync, then rename."""
    root = out_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_state = optimizer.state_dict()
    opt_tensors = {f"{pid}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
                   for pid, state in opt_state["state"].items() for k, v in state.items()}
    rng = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"rng.cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    fault_point("checkpoint_write")
    save_file({**opt_tensors, **rng}, str(tmp / "optimizer.safetensors"))
    files = {name: {"bytes": (tmp / name).stat().st_size, "sha1": _sha1(tmp / name)}
             for name in ("weights.safetensors", "optimizer.safetensors")}
    state = {"step": step, "param_groups": opt_state["param_groups"], "scheduler": scheduler.state_dict(),
             "files": files, **meta}
    (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
    for name in ("weights.safetensors", "optimizer.safetensors", "state.json"):
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(root)
    fault_point("checkpoint_renamed")
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: Path) -> dict:
    """Load ``state.json`` and check each file's size and hash; raise ValueError naming what is wrong."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable state.json ({e.__class__.__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict) or "step" not in state:
        raise ValueError(f"{path / 'state.json'}: not a minillava checkpoint state (field 'files' or 'step' missing)")
    for name, expected in state["files"].items():
        file = path / name
        if not file.is_file() or file.stat().st_size != expected["bytes"] or _sha1(file) != expected["sha1"]:
            raise ValueError(f"{file}: truncated or corrupt (size/hash differ from state.json)")
    return state


def latest_good_checkpoint(out_dir: Path, log=print) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies; corrupt ones are reported and skipped (falls back to older)."""
    for path in sorted((out_dir / "checkpoints").glob("step_*"), reverse=True):
        try:
            return path, verify_checkpoint(path)
        except ValueError as e:
            log(f"warning: {e}; falling back to an earlier checkpoint")
    return None


def check_resumable(path: Path, state: dict, cfg: Config, stage: int) -> None:
    """Resume is exact only with the checkpoint's stage, seed and batch layout; a mismatch is an error, not a drift."""
    if state.get("stage") != stage:
        raise ValueError(f"{path}: checkpoint of stage {state.get('stage')}, cannot resume stage {stage} from it")
    saved = state.get("config") or {}
    for key in ("seed", f"stage{stage}_batch", "grad_accum", "group_by_length"):
        if key in saved and saved[key] != getattr(cfg, key):
            raise ValueError(f"{path}: written with {key}={saved[key]}, this run has {key}={getattr(cfg, key)}; "
                             f"resume with the same value (or use a new --out)")


def rewind_log(log_path: Path, stage: int, step: int) -> None:
    """Drop log records of ``stage`` past ``step`` (written after the checkpoint resumed from) and torn lines."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by the interruption
        if not (record.get("stage") == stage and record.get("step", 0) > step):
            kept.append(line + "\n")
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(log_path)


def restore(path: Path, state: dict, model, optimizer, scheduler) -> int:
    lora.load_trainable_state(model, load_file(str(path / "weights.safetensors")))  # W (+ f_φ or its adapter)
    tensors = load_file(str(path / "optimizer.safetensors"))
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("rng."):
            continue
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available() and "rng.cuda0" in tensors:
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda{i}"] for i in range(torch.cuda.device_count())])
    return state["step"]


# --- the loop -----------------------------------------------------------------------------------------------

class NonFiniteLoss(RuntimeError):
    pass


def train_stage(model, dataset: InstructDataset, cfg: Config, stage: int, out_dir: str | Path, *,
                resume: bool = False, eval_fn=None, log_file: str = "log.jsonl", progress: bool = True) -> dict:
    """Train ``stage`` for ``cfg.stage{N}_steps`` optimiser steps; returns a summary (losses, seconds)."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    rank, world = init_distributed(device)
    steps, batch_size, lr = (getattr(cfg, f"stage{stage}_{k}") for k in ("steps", "batch", "lr"))
    if batch_size % (world * cfg.grad_accum):
        raise ValueError(f"stage{stage}_batch={batch_size} must divide by processes × grad_accum = "
                         f"{world} × {cfg.grad_accum}")
    micro = batch_size // (world * cfg.grad_accum)

    if STAGES[stage]["train_lm"] and cfg.lora_r:
        lora.apply_lora(model, cfg)  # stage 2 with low-rank adapters instead of updating all of f_φ
    model.to(device)
    params = set_trainable(model, stage)
    model.lm.train(STAGES[stage]["train_lm"])
    if cfg.gradient_checkpointing and STAGES[stage]["train_lm"]:  # keep only each layer's input (minillava plan)
        enable_checkpointing(model.lm)
    optimizer = make_optimizer(params, lr, cfg.weight_decay, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(steps, cfg.warmup_ratio))
    undo_compile = compile_decoder(model.lm.get_decoder()) if cfg.compile else (lambda: None)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)

    def log(message: str) -> None:
        if rank == 0:
            tqdm.write(message)

    start_step = 0
    if resume and (found := latest_good_checkpoint(out_dir, log)):
        check_resumable(found[0], found[1], cfg, stage)
        start_step = restore(*found, model, optimizer, scheduler)
        log(f"resumed stage {stage} from {found[0].name} (step {start_step})")
    elif resume:
        log(f"no good checkpoint in {out_dir / 'checkpoints'}; stage {stage} starts from step 0")

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") and cfg.bf16 else \
        torch.autocast("cpu", enabled=False)
    log_path = out_dir / log_file
    if start_step == 0 and rank == 0:
        log_path.unlink(missing_ok=True)  # a fresh run into an old directory must not append to its curve
    elif rank == 0:
        rewind_log(log_path, stage, start_step)  # steps logged after the checkpoint are about to be redone
    losses, t0, tokens_seen = [], time.perf_counter(), 0
    bar = tqdm(range(start_step, steps), desc=f"stage {stage}", disable=not progress or rank != 0,
               initial=start_step, total=steps)
    for step in bar:
        global_idx = dataset.batch_indices(step, batch_size, cfg.seed, cfg.group_by_length)
        # every rank counts the answer tokens of the *global* batch, so the loss is one global mean
        n_global = sum(int((dataset.items[i]["labels"][1:] != -100).sum()) for i in global_idx)
        if n_global == 0:  # the loss would be 0 / 0: a data bug, never something to train on
            raise NonFiniteLoss(f"stage {stage} step {step}: every label of the batch is masked (-100), so no "
                                f"answer token carries loss; samples {global_idx[:8]}")
        mine = global_idx[rank::world]
        step_loss = 0.0
        for k in range(cfg.grad_accum):
            part = mine[k * micro:(k + 1) * micro]
            rows = dataset.collate_packed(part, cfg.max_length) if cfg.pack_sequences else dataset.collate(part)
            batch = {key: to_device(v, device) for key, v in rows.items()}
            fault_point("train_batch")
            sync = k == cfg.grad_accum - 1 or world == 1
            context = ddp_model.no_sync() if not sync else contextlib.nullcontext()
            with context, autocast:
                loss_sum, _ = ddp_model(**batch)  # MiniLlava.forward: (sum of answer-token losses, count)
                loss = loss_sum * world / n_global  # DDP averages over processes; undo it to get sum / n_global
            loss.backward()
            step_loss += loss_sum.item()
        if world > 1:
            total = torch.tensor([step_loss], device=device)
            torch.distributed.all_reduce(total)
            step_loss = total.item()
        mean_loss = step_loss / n_global
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        if not (math.isfinite(mean_loss) and torch.isfinite(grad_norm)):
            raise NonFiniteLoss(f"stage {stage} step {step}: loss {mean_loss} / gradient norm {grad_norm.item()} "
                                f"is not finite; the last good checkpoint is kept in {out_dir / 'checkpoints'}")
        if mean_loss == 0.0:
            raise NonFiniteLoss(f"stage {stage} step {step}: loss is exactly 0 — every label masked?")
        fault_point("train_step")  # gradients computed, not yet applied
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(mean_loss)
        tokens_seen += sum(len(dataset.items[i]["input_ids"]) for i in global_idx)
        done = step + 1
        evaluate = eval_fn is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == steps)
        if rank == 0 and (done % cfg.log_every == 0 or done == steps or evaluate):
            elapsed = time.perf_counter() - t0
            record = {"stage": stage, "step": done, "loss": round(mean_loss, 5), "lr": scheduler.get_last_lr()[0],
                      "grad_norm": round(float(grad_norm), 4), "samples_per_s": round(
                          (done - start_step) * batch_size / elapsed, 2), "tokens_per_s": round(tokens_seen / elapsed, 1)}
            if evaluate:
                record.update(eval_fn(model))
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            fault_point("log_written")
            bar.set_postfix(loss=f"{mean_loss:.3f}")
        if rank == 0 and (done % cfg.save_every == 0 or done == steps):
            save_checkpoint(out_dir, done, lora.trainable_state(model, include_lm=STAGES[stage]["train_lm"]),
                            optimizer, scheduler, {"stage": stage, "seed": cfg.seed, "config": cfg.to_dict()},
                            cfg.keep_checkpoints)
    undo_compile()  # evaluation and generation after training run the plain decoder
    seconds = time.perf_counter() - t0
    return {"stage": stage, "steps": steps, "first_loss": losses[0] if losses else None,
            "last_loss": sum(losses[-20:]) / max(1, len(losses[-20:])) if losses else None, "seconds": seconds}


# --- one stage end to end: data → model → loop → model directory -----------------------------------------

def stage_samples(cfg: Config, stage: int, data_dir: Path, split: str | None = None) -> tuple[list[dict], str]:
    """Stage 1: (image, brief prompt, caption) from the train split; stage 2: the §3 instruction JSON.

    ``split`` other than the training split (e.g. "val") gives held-out samples made by the rule teacher.
    """
    from .data.dataset import caption_samples
    from .data.llava_json import read_llava_json
    from .data.records import load_split
    from .data.teachers import generate_rule_instructions

    split = split or cfg.data_split
    if stage == 1:
        return caption_samples(load_split(data_dir, split), cfg.seed), f"{data_dir} {split} captions"
    if split != cfg.data_split:
        return generate_rule_instructions(load_split(data_dir, split), seed=cfg.seed), f"{data_dir} {split} rule"
    path = cfg.instruct_json or str(data_dir / f"instruct_{cfg.data_split}.json")
    samples = read_llava_json(path)
    wanted = set(cfg.stage2_types.split(","))
    return [s for s in samples if s.get("type", "conv") in wanted], path


def run_stage(cfg: Config, stage: int, out_dir: str | Path, *, resume: bool = False, model=None, processor=None,
              features: dict | None = None, progress: bool = True) -> tuple[object, dict]:
    """Train one stage from ``cfg`` and write a model directory to ``out_dir``; returns (model, summary)."""
    from .model.build import build_model, save_model
    from .model.llava import load_weights

    data_dir = Path(cfg.data_dir)
    if model is None:
        model, processor = build_model(cfg)
        if cfg.init_from:  # e.g. stage 2 starts from stage 1's projector
            model.load_trainable_state(load_weights(Path(cfg.init_from) / "model.safetensors"))
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
    eval_fn = None
    if cfg.eval_every and (data_dir / "annotations" / "captions_val.json").is_file():
        val_samples, val_source = stage_samples(cfg, stage, data_dir, split="val")
        val = InstructDataset(val_samples[:128], model.tokenizer, dataset_template(cfg, stage, model.tokenizer),
                              image_tokens=model.num_image_tokens, max_length=cfg.max_length, source=val_source)
        val.attach_features(image_features(val.images))
        eval_fn = lambda m: {"val_loss": round(validation_loss(m, val), 5)}  # noqa: E731
    summary = train_stage(model, dataset, cfg, stage, out_dir, resume=resume, eval_fn=eval_fn, progress=progress)
    if dist_info()[0] == 0:
        save_model(model, cfg, out_dir, include_lm=STAGES[stage]["train_lm"], extra={"stage": stage})
    summary["features"], summary["processor"] = features, processor
    return model, summary


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
    return get_template(getattr(cfg, f"stage{stage}_template"), tokenizer)


@torch.no_grad()
def validation_loss(model, dataset: InstructDataset, batch_size: int = 32) -> float:
    """Mean answer-token loss over a held-out dataset (the model's train/eval mode is restored)."""
    was_training = model.lm.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(dataset), batch_size):
        batch = {k: v.to(device) for k, v in dataset.collate(list(range(i, min(i + batch_size, len(dataset))))).items()}
        loss_sum, n = model(**batch)
        total, count = total + loss_sum.item(), count + n
        fault_point("eval")
    model.lm.train(was_training)
    return total / max(count, 1)
