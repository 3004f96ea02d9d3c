"""A disk cache of Z_v = g(X_v): the frozen tower runs once per image, ever, not once per run.

g is frozen in both stages (§4.2), so its features are a pure function of (tower weights, select layer, CLS
choice, preprocessing, image bytes). The cache directory is named by a hash of everything but the image, so a
different tower or layer simply looks in another directory; inside it each image's features are stored under
the sha1 of the image file's bytes, so an edited image is a miss and a renamed one is a hit.

    CACHE_DIR/<tower>-<key hash>/key.json          the key in full, for people
                                 index.json        shards (sha1, bytes) and which image hash lives where
                                 shard-<id>.safetensors   {image sha1: (N, Dv) bf16 | fp16 | fp32}

Every file is written to a temporary name, fsynced, then renamed; the index is rewritten after each shard, so an
interrupted run keeps every finished shard. A shard whose bytes do not match its sha1 in the index is reported
in one line, dropped, and its images are recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..files import DataError, file_sha1, write_atomic

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PROCESSOR_FIELDS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                    "do_normalize", "image_mean", "image_std", "do_convert_rgb")
FORMAT = 1


def sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def image_sha1(path: Path) -> str:
    """sha1 of an image file's bytes: the cache's key for it; a missing image is a one-line DataError."""
    try:
        return file_sha1(path)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None


def weights_sha1(module: torch.nn.Module) -> str:
    """sha1 over every tensor of ``module.state_dict()`` (name, dtype, shape and bytes): the tower's identity."""
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def feature_key(vision: torch.nn.Module, processor, *, name: str, select_layer: int, keep_cls: bool,
                dtype: str = "bf16") -> dict:
    """Everything the stored features depend on except the image itself."""
    if dtype not in DTYPES:
        raise ValueError(f"feature cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    settings = processor.to_dict() if hasattr(processor, "to_dict") else {}
    return {"format": FORMAT, "vision_name": name, "vision_weights_sha1": weights_sha1(vision),
            "vision_dtype": str(next(vision.parameters()).dtype).replace("torch.", ""),
            "image_size": int(vision.config.image_size), "select_layer": int(select_layer), "keep_cls": bool(keep_cls),
            "processor": {k: settings[k] for k in PROCESSOR_FIELDS if k in settings}, "dtype": dtype}


@contextlib.contextmanager
def _locked(directory: Path):
    """One writer at a time (ranks of a DDP run share the cache); a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: single-process use only
        yield
        return
    with open(directory / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class FeatureCache:
    """Z_v per image on disk, in ``root/<tower>-<key hash>``; ``get`` returns cached rows and computes the rest."""

    def __init__(self, root: str | Path, key: dict, shard_images: int = 1024, log: Callable[[str], None] = print):
        digest = sha1_bytes(json.dumps(key, sort_keys=True, default=str).encode())[:12]
        tower = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(key["vision_name"])).name or "vision").strip("-") or "vision"
        self.dir = Path(root) / f"{tower}-{digest}"
        self.key, self.dtype, self.shard_images, self.log = key, DTYPES[key["dtype"]], shard_images, log
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "key.json").is_file():
            write_atomic(self.dir / "key.json", json.dumps(key, indent=1, default=str), durable=True)
        self.hits = self.misses = 0

    @classmethod
    def for_model(cls, root: str | Path, model, processor, *, name: str, dtype: str = "bf16", **kwargs):
        """The cache for a MiniLlava-like ``model`` (``.vision``, ``.select_layer``, ``.keep_cls``)."""
        return cls(root, feature_key(model.vision, processor, name=name, select_layer=model.select_layer,
                                     keep_cls=model.keep_cls, dtype=dtype), **kwargs)

    # --- the index -----------------------------------------------------------------------------------------
    def _read_index(self) -> dict:
        try:
            index = json.loads((self.dir / "index.json").read_text())
            if isinstance(index, dict) and index.get("format") == FORMAT:
                return index
            self.log(f"warning: {self.dir / 'index.json'} has an unknown layout; the feature cache starts empty")
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            self.log(f"warning: {self.dir / 'index.json'} is unreadable ({e.__class__.__name__}); "
                     f"the feature cache starts empty")
        return {"format": FORMAT, "shards": {}, "entries": {}}

    def _write_index(self, index: dict) -> None:
        write_atomic(self.dir / "index.json", json.dumps(index, indent=0, sort_keys=True), durable=True)

    def _load_shard(self, index: dict, shard: str) -> dict[str, torch.Tensor] | None:
        """The shard's tensors, or None (after a one-line warning) when its bytes do not match the index."""
        meta = index["shards"][shard]
        try:
            data = (self.dir / shard).read_bytes()
            if len(data) != meta["bytes"] or sha1_bytes(data) != meta["sha1"]:
                raise ValueError("size/sha1 differ from index.json")
            return load_safetensors(data)
        except (OSError, ValueError, RuntimeError) as e:  # missing, truncated, or not safetensors at all
            self.log(f"warning: feature cache shard {self.dir / shard} is corrupt ({e}); "
                     f"recomputing its {meta['count']} images")
            return None

    # --- the one entry point -------------------------------------------------------------------------------
    def get(self, image_root: str | Path, names: list[str],
            compute: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Z_v for ``names`` (files under ``image_root``) in that order: (len(names), N, Dv) float32 on the CPU.

        ``compute(names)`` runs the tower on the images that are not cached; its result is stored before it is
        returned, in shards of ``shard_images`` images.
        """
        hashes = [image_sha1(Path(image_root) / n) for n in names]
        with _locked(self.dir):
            index = self._read_index()
            found: dict[str, torch.Tensor] = {}
            wanted_shards = sorted({index["entries"][h] for h in hashes if h in index["entries"]})
            for shard in wanted_shards:
                if shard not in index["shards"]:
                    continue
                tensors = self._load_shard(index, shard)
                if tensors is None:  # forget the shard; its images become misses below
                    del index["shards"][shard]
                    index["entries"] = {h: s for h, s in index["entries"].items() if s != shard}
                    (self.dir / shard).unlink(missing_ok=True)
                    self._write_index(index)
                    continue
                found.update({h: tensors[h] for h in hashes if index["entries"].get(h) == shard})
            todo = list(dict.fromkeys(n for n, h in zip(names, hashes) if h not in found))  # unique, in order
            self.hits, self.misses = len(names) - len(todo), len(todo)
            name_hash = dict(zip(names, hashes))
            for i in range(0, len(todo), self.shard_images):
                chunk = todo[i:i + self.shard_images]
                features = compute(chunk).float().cpu()                     # (len(chunk), N, Dv)
                stored = {name_hash[n]: f.to(self.dtype).contiguous() for n, f in zip(chunk, features)}
                data = save_safetensors(stored)
                shard = f"shard-{uuid.uuid4().hex[:12]}.safetensors"
                write_atomic(self.dir / shard, data, durable=True)
                index["shards"][shard] = {"sha1": sha1_bytes(data), "bytes": len(data), "count": len(stored)}
                index["entries"].update({h: shard for h in stored})
                self._write_index(index)
                found.update(stored)
        if not names:
            return torch.zeros(0)
        return torch.stack([found[h] for h in hashes]).float()
