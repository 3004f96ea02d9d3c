"""Everything written to disk about a model: its trained weights, and the training checkpoints that resume a run.

Two kinds of file, both safetensors + JSON:

    <model dir>/model.safetensors      W, plus f_φ after stage 2 (LoRA merged in, or the bare adapter for QLoRA)
    <out>/checkpoints/step_N/          weights.safetensors   W, plus f_φ or its LoRA adapter (what trains, §4.2)
                                       optimizer.safetensors AdamW moments and the RNG states
                                       state.json            step, schedule, sizes and sha1 of both files

A tied LM head (``tie_word_embeddings``) is the embedding table itself, so it is written once and re-tied on load.
The frozen vision tower g is never written: it is loaded again by name, as LLaVA checkpoints refer to CLIP.

This module sits between the model's parts (``model.llava``, ``model.lora``) and what assembles or trains a model
(``model.build``, ``train``); it imports only the former.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes

from .faults import fault_point
from .files import file_sha1, write_atomic
from .model.lora import apply_lora, has_lora, is_adapter_weight, merged_copy


# --- a model's trained parts ----------------------------------------------------------------------------------

def drop_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the first of every group of entries that are one tensor (tied weights), which safetensors refuses to
    write twice: ``lm.model.embed_tokens.weight`` stays, ``lm.lm_head.weight`` goes, and loading re-ties it."""
    seen, kept = set(), {}
    for key, tensor in state.items():
        where = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if where not in seen:
            seen.add(where)
            kept[key] = tensor
    return kept


def model_weights(model, include_lm: bool = True) -> dict[str, torch.Tensor]:
    """What a model learns, by name: ``projector.*`` (W), and ``lm.*``: all of f_φ, or only its LoRA adapter
    (A, B) when one is attached — the frozen base weights are loaded again from the LM's name."""
    state = {f"projector.{k}": v for k, v in model.projector.state_dict().items()}
    if has_lora(model.lm):
        state.update({f"lm.{k}": v for k, v in model.lm.state_dict().items() if is_adapter_weight(k)})
    elif include_lm:
        state.update({f"lm.{k}": v for k, v in model.lm.state_dict().items()})
    return drop_shared(state)


def set_model_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Inverse of ``model_weights``: W, then f_φ or (when the LM carries one) every tensor of the adapter."""
    model.projector.load_state_dict({k[len("projector."):]: v for k, v in weights.items()
                                     if k.startswith("projector.")})
    lm = {k[len("lm."):]: v for k, v in weights.items() if k.startswith("lm.")}
    if has_lora(model.lm):
        expected = {k for k in model.lm.state_dict() if is_adapter_weight(k)}
        if set(lm) != expected:
            raise ValueError(f"checkpoint adapter does not match the model's LoRA layers: missing "
                             f"{sorted(expected - set(lm))[:3]}, unexpected {sorted(set(lm) - expected)[:3]}")
        model.lm.load_state_dict(lm, strict=False)
    elif lm:
        missing, unexpected = model.lm.load_state_dict(lm, strict=False)
        # a tied head is saved once, as the embeddings; loading those fills the head too (same tensor)
        real_missing = [k for k in missing if not (k.startswith("lm_head.") and model.lm_is_tied())]
        if real_missing or unexpected:
            raise ValueError(f"LM weights do not match the model: missing {real_missing[:3]}, "
                             f"unexpected {unexpected[:3]}")


def save_weights(path: str | Path, model, include_lm: bool = True, keep_adapter: bool = False) -> Path:
    """Write ``model.safetensors`` atomically; the projector type and layer go into its metadata.

    A LoRA adapter is folded in (W₀ + (α/r)·BA) on a copy, so the file loads without peft and the live model keeps
    training with its adapter; ``keep_adapter`` writes the bare adapter instead (QLoRA: a 4-bit base cannot merge).
    """
    path = Path(path)
    source = model if keep_adapter else merged_copy(model)
    meta = {"projector": model.projector_type, "select_layer": model.select_layer}
    tensors = {k: v.detach().contiguous() for k, v in model_weights(source, include_lm).items()}
    return write_atomic(path, safetensors_bytes(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))


def load_weights(model, path: str | Path, cfg=None):
    """Load a ``model.safetensors`` into ``model``; a file holding a bare adapter (QLoRA) gets one attached first,
    shaped by ``cfg``'s ``lora_*`` fields. Returns ``model``."""
    weights = load_file(str(path))
    if any(is_adapter_weight(k) for k in weights) and not has_lora(model.lm):
        if cfg is None:
            raise ValueError(f"{path} holds a LoRA adapter; pass the run's config to attach one")
        apply_lora(model, cfg)
    set_model_weights(model, weights)
    return model


# --- training checkpoints: write, check, find, restore ------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(out_dir: Path, step: int, weights: dict, optimizer, scheduler, meta: dict, keep: int) -> Path:
    """Write ``checkpoints/step_N`` atomically: into a temporary directory, fsync, then rename; keep the newest
    ``keep``. A kill at any point leaves either the old set of checkpoints or the new one, never half of one."""
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
    files = {name: {"bytes": (tmp / name).stat().st_size, "sha1": file_sha1(tmp / name)}
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


def verify(path: Path) -> dict:
    """Load ``state.json`` and check each file's size and hash; raise ValueError naming what is wrong."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable state.json ({e.__class__.__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict) or "step" not in state:
        raise ValueError(f"{path / 'state.json'}: not a minillava checkpoint state (field 'files' or 'step' missing)")
    for name, expected in state["files"].items():
        file = path / name
        if not file.is_file() or file.stat().st_size != expected["bytes"] or file_sha1(file) != expected["sha1"]:
            raise ValueError(f"{file}: truncated or corrupt (size/hash differ from state.json)")
    return state


def latest_good(out_dir: Path, log=print) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies; corrupt ones are reported and skipped (falls back to older)."""
    for path in sorted((out_dir / "checkpoints").glob("step_*"), reverse=True):
        try:
            return path, verify(path)
        except ValueError as e:
            log(f"warning: {e}; falling back to an earlier checkpoint")
    return None


def check_resumable(path: Path, state: dict, cfg, stage: int) -> None:
    """Resume is exact only with the checkpoint's stage, seed and batch layout; a mismatch is an error, not a drift."""
    if state.get("stage") != stage:
        raise ValueError(f"{path}: checkpoint of stage {state.get('stage')}, cannot resume stage {stage} from it")
    saved = state.get("config") or {}
    for key in ("seed", cfg.stage(stage).field("batch"), "grad_accum", "group_by_length"):
        if key in saved and saved[key] != getattr(cfg, key):
            raise ValueError(f"{path}: written with {key}={saved[key]}, this run has {key}={getattr(cfg, key)}; "
                             f"resume with the same value (or use a new --out)")


def restore(path: Path, state: dict, model, optimizer, scheduler) -> int:
    """Put the weights, AdamW moments, schedule and RNG states of a verified checkpoint back; returns its step."""
    set_model_weights(model, load_file(str(path / "weights.safetensors")))  # W (+ f_φ or its adapter)
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


def resume(out_dir: Path, cfg, stage: int, model, optimizer, scheduler, log=print) -> int:
    """The step to go on from: that of the newest good checkpoint (restored into the model and optimiser), or 0."""
    found = latest_good(out_dir, log)
    if found is None:
        log(f"no good checkpoint in {out_dir / 'checkpoints'}; stage {stage} starts from step 0")
        return 0
    check_resumable(*found, cfg, stage)
    step = restore(*found, model, optimizer, scheduler)
    log(f"resumed stage {stage} from {found[0].name} (step {step})")
    return step


def rewind(log_path: Path, stage: int, step: int) -> None:
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
    write_atomic(log_path, "".join(kept))
