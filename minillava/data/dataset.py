"""Training samples: LLaVA JSON + images → token ids, loss labels and image features.

Data order is a pure function of (seed, step): batch ``s`` takes the next slice of a seeded permutation of the
samples (a fresh permutation each epoch). Resuming at step ``s`` therefore replays exactly the same batches as
an uninterrupted run, with no sampler state to save, and ranks of a distributed run take disjoint slices.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..conversation import IGNORE_INDEX, IMAGE_TOKEN, Template, tokenize_conversation
from .llava_json import make_sample
from .prompts import BRIEF_PROMPTS
from .records import DataError, ImageRecord
from .teachers import cell_by_cell


def caption_samples(records: list[ImageRecord], seed: int = 0, cells: bool = False) -> list[dict]:
    """Stage 1 (§4.2): each image with a random brief prompt and one of its captions as the answer.

    ``cells``: one more sample per embedded scene whose answer names what stands in every cell
    (``teachers.cell_by_cell``); an addition of ours, not the paper's (COCO images have no grid to name)."""
    rng = random.Random(seed)
    samples = [make_sample(f"{r.image_id}_cap{i}", r.file_name, [(rng.choice(BRIEF_PROMPTS), caption)])
               for r in records for i, caption in enumerate(r.captions)]
    if cells:  # drawn after the captions' prompts, so those are the same either way
        samples += [make_sample(f"{r.image_id}_cells", r.file_name, [(rng.choice(BRIEF_PROMPTS), cell_by_cell(r))])
                    for r in records if r.objects and all(o.color for o in r.objects)]
    return samples


def load_image(path: Path):
    """RGB PIL image; grayscale, palette, 16-bit and alpha images are converted, broken files named."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits before RGB
                im = im.point(lambda v: v / 256).convert("L")
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from None


class InstructDataset:
    """Tokenised samples plus one row of image features per sample (features computed once: g is frozen)."""

    def __init__(self, samples: list[dict], tokenizer, template: Template, *, image_tokens: int, max_length: int,
                 source: str = "samples"):
        self.items, self.image_of, self.truncated = [], [], 0
        for i, sample in enumerate(samples):
            try:
                item = tokenize_conversation(sample, tokenizer, template, image_tokens=image_tokens,
                                             max_length=max_length)
            except ValueError as e:
                raise DataError(f"{source}: record {i}: {e}") from None
            if item["truncated"]:
                self.truncated += 1
                if (item["labels"] != IGNORE_INDEX).sum() == 0:
                    raise DataError(f"{source}: record {i} (id={sample.get('id')}): longer than max_length="
                                    f"{max_length} and nothing of its answer is left after truncation")
                if (item["input_ids"] == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).sum() % image_tokens:
                    raise DataError(f"{source}: record {i} (id={sample.get('id')}): truncation at max_length="
                                    f"{max_length} cuts through the image tokens")
            self.items.append(item)
            self.image_of.append(sample.get("image"))
        self.pad_id = tokenizer.pad_token_id
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.images = sorted({name for name in self.image_of if name})
        self.image_index = {name: j for j, name in enumerate(self.images)}
        self.features: torch.Tensor | None = None  # (num_images, N, Dv), filled by attach_features

    def __len__(self) -> int:
        return len(self.items)

    def attach_features(self, features: torch.Tensor) -> None:
        if features.shape[0] != len(self.images):
            raise ValueError(f"expected features for {len(self.images)} images, got {features.shape[0]}")
        self.features = features

    def order(self, epoch: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(self.items), generator=g)

    def batch_indices(self, step: int, batch_size: int, seed: int, group_by_length: int = 0) -> list[int]:
        """The sample indices of global batch ``step`` (may span an epoch boundary).

        With ``group_by_length = G`` the stream is cut into mega-batches of G batches; each mega-batch is sorted
        by length and split into G batches that are visited in a seeded random order. Samples of similar
        length then share a batch, so little compute goes to padding, and the order stays a function of
        (seed, step).
        """
        if group_by_length > 1:
            mega, within = divmod(step, group_by_length)
            pool = self._stream(mega * group_by_length * batch_size, group_by_length * batch_size, seed)
            pool.sort(key=lambda i: len(self.items[i]["input_ids"]))
            g = torch.Generator().manual_seed(seed * 7_919 + mega)
            chosen = int(torch.randperm(group_by_length, generator=g)[within])
            return pool[chosen * batch_size:(chosen + 1) * batch_size]
        return self._stream(step * batch_size, batch_size, seed)

    def _stream(self, start: int, count: int, seed: int) -> list[int]:
        """Positions [start, start + count) of the endless sequence of seeded epoch permutations."""
        n = len(self.items)
        perms: dict[int, torch.Tensor] = {}
        out = []
        for k in range(start, start + count):
            epoch, pos = divmod(k, n)
            if epoch not in perms:
                perms[epoch] = self.order(epoch, seed)
            out.append(int(perms[epoch][pos]))
        return out

    def collate(self, indices: list[int], share_prefix: bool = False) -> dict[str, torch.Tensor]:
        """Right-padded ids, labels (-100 on padding), attention mask, and the samples' image features.

        ``share_prefix``: also ``shared_prefix`` = P, the length of the leading tokens every row has in common
        (BOS + system prompt + ``USER:``), when that is worth running once (``model.llava.decode_rest``)."""
        batch = pad_right([self.items[i] for i in indices], self.pad_id)
        if share_prefix and (prefix := prefix_worth_sharing(batch["input_ids"], batch["labels"], self.image_id)):
            batch["shared_prefix"] = prefix
        with_image = [self.image_index[self.image_of[i]] for i in indices if self.image_of[i]]
        if with_image:
            if self.features is None:
                raise RuntimeError("image features are not attached (call attach_features)")
            batch["image_features"] = self.features[with_image]
        return batch

    def collate_packed(self, indices: list[int], max_length: int) -> dict[str, torch.Tensor]:
        """Padding-free batch: the samples concatenated into rows of at most ``max_length`` tokens.

        ``position_ids`` restart at 0 for every sample, and no ``attention_mask`` is returned: from restarting
        positions transformers (≥ 4.53, sdpa / eager / flash) builds a block-diagonal causal mask, so a token
        attends only to earlier tokens of its own sample. Each sample's first label is -100, so no sample is
        asked to predict the next one's first token. Image features follow the rows' order, which is the order
        ``masked_scatter`` fills the ``<image>`` positions in. The loss sum and count equal ``collate``'s.
        """
        rows = pack_rows([len(self.items[i]["input_ids"]) for i in indices], max_length)
        rows = [[indices[j] for j in row] for row in rows]
        width = max(sum(len(self.items[i]["input_ids"]) for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id)                     # (R, L), R ≤ len(indices)
        labels = torch.full((len(rows), width), IGNORE_INDEX)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                x = self.items[i]
                n = len(x["input_ids"])
                ids[r, at:at + n], labels[r, at:at + n] = x["input_ids"], x["labels"]
                labels[r, at] = IGNORE_INDEX                          # never a target (collate shifts it out too)
                positions[r, at:at + n] = torch.arange(n)
                at += n
            positions[r, at:] = torch.arange(width - at)              # the padded tail is a sequence of its own
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
        with_image = [self.image_index[self.image_of[i]] for row in rows for i in row if self.image_of[i]]
        if with_image:
            if self.features is None:
                raise RuntimeError("image features are not attached (call attach_features)")
            batch["image_features"] = self.features[with_image]
        return batch


def pad_right(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Tokenised samples → a training batch: ids, labels (-100 on padding) and attention mask, all (B, L)."""
    length = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), length), pad_id)
    labels = torch.full((len(items), length), IGNORE_INDEX)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, x in enumerate(items):
        n = len(x["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = x["input_ids"], x["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


MIN_SHARED_PREFIX = 8  # below this the extra decoder call costs more than the rows it saves (stage 1: BOS only)


def shared_prefix_length(ids: torch.Tensor, labels: torch.Tensor, image_id: int) -> int:
    """P: how many leading positions of the (B, L) batch hold the same token in every row, stopping before the
    first ``<image>`` (each row's H_v differs) and keeping position P free of loss (it is predicted from P - 1)."""
    same = (ids == ids[:1]).all(dim=0) & (ids[0] != image_id)        # (L,)
    prefix = int(same.long().cumprod(0).sum())
    prefix = min(prefix, ids.shape[1] - 1)
    while prefix > 0 and (labels[:, :prefix + 1] != IGNORE_INDEX).any():
        prefix -= 1
    return prefix


def prefix_worth_sharing(ids: torch.Tensor, labels: torch.Tensor, image_id: int) -> int:
    """``shared_prefix_length`` where running it once pays (≥ 2 rows, ≥ ``MIN_SHARED_PREFIX`` tokens), else 0."""
    prefix = shared_prefix_length(ids, labels, image_id) if ids.shape[0] > 1 else 0
    return prefix if prefix >= MIN_SHARED_PREFIX else 0


def left_pad(prompts: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prompts of different lengths, padded on the left so every row ends where generation starts.

    Returns ids and attention mask, both (B, L)."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, length - len(p):], mask[row, length - len(p):] = p, 1
    return ids, mask


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Positions into ``lengths`` grouped into as few rows of ≤ ``capacity`` tokens as fit, of similar fill.

    Rows are padded to the fullest one, so the fills should be even, not first-fit-full: start with
    ceil(total / capacity) rows and give each sample, longest first, to the emptiest row (a new row when even
    that one has no room). Deterministic (ties keep input order), so a packed run replays exactly on resume.
    A sample longer than ``capacity`` gets a row of its own.
    """
    rows: list[list[int]] = [[] for _ in range(max(1, -(-sum(lengths) // capacity)))]
    fill = [0] * len(rows)
    for j in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        r = min(range(len(rows)), key=lambda r: fill[r])
        if fill[r] and fill[r] + lengths[j] > capacity:
            rows.append([])
            fill.append(0)
            r = len(rows) - 1
        rows[r].append(j)
        fill[r] += lengths[j]
    return [row for row in rows if row]


def padding_tokens(lengths: list[int], batch_rows: list[list[int]]) -> int:
    """Pad tokens when each row (a list of positions into ``lengths``) is right-padded to the longest row."""
    fills = [sum(lengths[j] for j in row) for row in batch_rows]
    return len(fills) * max(fills) - sum(fills)


@torch.no_grad()
def compute_features(model, image_root: Path, names: list[str], processor, batch_size: int = 64,
                     device: str = "cpu", progress: bool = True) -> torch.Tensor:
    """Z_v for every image once, through the frozen tower: (num_images, N, Dv) on the CPU."""
    model.vision.to(device)  # g is frozen: computing Z_v where the run trains, before the trainer moves the rest
    return features_of_files(model, processor, [Path(image_root) / name for name in names], batch_size=batch_size,
                             device=device, progress=progress)


@torch.no_grad()
def features_of_files(model, processor, paths: list[Path], *, batch_size: int = 64, device="cpu",
                      progress: bool = False) -> torch.Tensor:
    """Image files → pixels (the CLIP processor) → Z_v = g(X_v) (§4.1): (len(paths), N, Dv), on the CPU."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(paths), batch_size), desc="image features", disable=not progress):
        images = [load_image(path) for path in paths[i:i + batch_size]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device, model.vision.dtype)
        out.append(model.image_features(pixels).float().cpu())
    if not out:
        return torch.zeros(0)
    return torch.cat(out)
