"""COCO 2017: download the official zips (resumable, verified), extract them once, cut a reproducible subset.

The subset is written in the layout of ``records.py`` (``DIR/images``, ``DIR/annotations/*_<split>.json``) by
*filtering the original JSON*, so the files stay genuine COCO: pycocotools loads them, the category ids are COCO's
own (1 person ... 90 toothbrush, with gaps), and nothing downstream needs to know it is looking at a subset.

    prepare_coco("val2017", 500, "data/coco500")     # download (once), extract (once), subset

A mirror (or a test server) that serves the same paths can stand in for cocodataset.org: pass ``base_url`` or set
``MINILLAVA_COCO_URL``. Downloads and extractions are cached under ``$MINILLAVA_CACHE/coco`` (default
``~/.cache/minillava/coco``), which after extraction has COCO's own layout: ``val2017/``, ``annotations/`` ...
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from minillava.faults import fault_point
from ..files import DataError, write_json
from .records import annotation_paths, read_coco_json, verify_image

BASE_URL = "http://images.cocodataset.org"


@dataclass(frozen=True)
class RemoteFile:
    path: str              # below the base URL
    size: int              # bytes; always checked
    md5: str | None = None  # checked when known


FILES = {
    "val2017.zip": RemoteFile("zips/val2017.zip", 815585330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "train2017.zip": RemoteFile("zips/train2017.zip", 19336861798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "annotations_trainval2017.zip": RemoteFile("annotations/annotations_trainval2017.zip", 252907541,
                                               "113a836d90195ee1f884e704da6304df"),
}
SPLITS = ("train2017", "val2017")
ANNOTATIONS_ZIP = "annotations_trainval2017.zip"
CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$MINILLAVA_CACHE/coco``, or ``~/.cache/minillava/coco`` when the variable is unset."""
    root = os.environ.get("MINILLAVA_CACHE") or Path.home() / ".cache" / "minillava"
    return Path(root).expanduser() / "coco"


def _progress_bar(enabled: bool, **kwargs) -> tqdm:
    # An explicit ``disable=`` would override tqdm's own TQDM_DISABLE handling, so check the variable here too.
    off = not enabled or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(disable=off, unit_scale=True, **kwargs)


class _Incomplete(Exception):
    """The transfer ended before all promised bytes arrived; retried, resuming from the bytes on disk."""


_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, _Incomplete)


def _mismatch(path: Path, size: int | None, md5: str | None) -> str | None:
    """Why ``path`` is not the expected file, or None when it is (size always, md5 when given)."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size mismatch: expected {size} bytes, got {actual}"
    if md5 is not None:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        if digest.hexdigest() != md5.lower():
            return f"md5 mismatch: expected {md5}, got {digest.hexdigest()}"
    return None


def _fetch(url: str, part: Path, have: int, progress: bool, timeout: float) -> None:
    """One HTTP transfer into ``part``, asking for the bytes after the ``have`` already there."""
    headers = {"User-Agent": "minillava"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise
        # "Range not satisfiable": the .part is already whole, or longer than the remote file (then start over).
        if e.headers.get("Content-Range", "").rpartition("/")[2] != str(have):
            part.unlink()
            raise _Incomplete("partial file is longer than the remote file; restarting") from None
        return
    with resp:
        start = 0
        if have and resp.status == 206:
            if not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                part.unlink()  # an unexpected range cannot be appended; fetch everything next time
                raise _Incomplete(f"server answered with range {resp.headers.get('Content-Range')!r}")
            start = have
        # Any other success (a 200 from a server that ignores Range) carries the whole file: rewrite, don't append.
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        written = 0
        with open(part, "ab" if start else "wb") as f, _progress_bar(
                progress, total=None if expected is None else start + expected, initial=start, unit="B",
                desc=part.name.removesuffix(".part")) as bar:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
                fault_point("download_chunk")
        if expected is not None and written < expected:
            raise _Incomplete(f"connection closed after {start + written} of {start + expected} bytes")


def download(url: str, dest: str | Path, *, size: int | None = None, md5: str | None = None,
             progress: bool = True, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` through ``dest.part``: resumable, retried, verified, renamed atomically.

    A verified ``dest`` is kept as is. A dropped connection is retried after ``backoff * 2**n`` seconds, each try
    resuming from the bytes on disk; a try that made progress resets the count, so a long file on a flaky link
    still finishes. A file that fails the size/md5 check is deleted and raises a one-line DataError.
    """
    dest = Path(dest)
    if dest.exists():
        if _mismatch(dest, size, md5) is None:
            return dest
        dest.unlink()  # stale or damaged: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        if size is not None and have == size:
            break  # already complete on disk (e.g. interrupted between the last byte and the rename)
        try:
            _fetch(url, part, have, progress, timeout)
            break
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code not in (408, 429):  # a client error will not go away by retrying
                raise DataError(f"{dest.name}: {url} answered HTTP {e.code} {e.reason}") from None
            error: Exception = e
        except _RETRYABLE as e:
            error = e
        now = part.stat().st_size if part.exists() else 0
        failures = 0 if now > have else failures + 1
        if failures > retries:
            raise DataError(f"{dest.name}: download from {url} failed {failures} times in a row; "
                            f"last error: {error}") from None
        time.sleep(min(backoff * 2 ** failures, 60.0))
    fault_point("download_complete")  # every byte on disk, not yet verified or renamed
    problem = _mismatch(part, size, md5)
    if problem:
        part.unlink()
        raise DataError(f"{dest.name}: {problem} (downloaded from {url}; deleted, run again to retry)")
    os.replace(part, dest)
    return dest


def _marker(cache_dir: Path, zip_name: str) -> Path:
    return cache_dir / f".{zip_name}.extracted"


def extract(zip_path: str | Path, dest_dir: str | Path, *, progress: bool = True) -> Path:
    """Unzip ``zip_path`` into ``dest_dir`` once. The marker is written last, so an interrupted run is redone."""
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    marker = _marker(dest_dir, zip_path.name)
    if marker.exists():
        return dest_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in _progress_bar(progress, iterable=zf.infolist(), desc=f"extract {zip_path.name}",
                                        unit="file"):
                zf.extract(member, dest_dir)  # overwrites leftovers; strips absolute paths and '..'
                fault_point("extract_member")
    except zipfile.BadZipFile as e:
        raise DataError(f"{zip_path}: not a valid zip file ({e})") from None
    marker.write_text(f"{zip_path.name} {zip_path.stat().st_size}\n")
    return dest_dir


def _place(src: Path, dst: Path) -> None:
    """Hardlink ``src`` to ``dst`` (no extra disk), or copy where links are impossible (another filesystem)."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def make_subset(coco_root: str | Path, split: str, out_dir: str | Path, limit: int | None, seed: int,
                skip_bad: bool = False) -> dict:
    """Copy ``limit`` images of ``split`` (all when None), drawn by ``seed``, with their COCO annotations.

    ``coco_root`` has COCO's layout (``<split>/<file_name>``, ``annotations/*_<split>.json``). Candidates are the
    images with at least one caption (zero instances is fine). Every chosen picture is decoded first; a missing or
    corrupt one raises a one-line DataError, or with ``skip_bad`` is counted and replaced by the next candidate.
    """
    coco_root, out_dir = Path(coco_root), Path(out_dir)
    cap_src, inst_src = annotation_paths(coco_root, split)
    captions, instances = read_coco_json(cap_src), read_coco_json(inst_src)
    with_captions = {ann.get("image_id") for ann in captions["annotations"] if isinstance(ann, dict)}
    by_id = {img["id"]: img for img in instances["images"]
             if isinstance(img, dict) and img.get("id") in with_captions}
    candidates = sorted(by_id)  # sorted first, so the draw depends only on the seed and the set of ids
    random.Random(seed).shuffle(candidates)

    chosen, skipped = [], 0
    for image_id in candidates:
        if limit is not None and len(chosen) >= limit:
            break
        try:
            verify_image(coco_root / split / str(by_id[image_id].get("file_name")))
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{e} (image id={image_id})") from None
            skipped += 1
            continue
        chosen.append(image_id)

    keep = set(chosen)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for image_id in chosen:  # pictures first, so the annotations never name a missing file
        name = by_id[image_id]["file_name"]
        _place(coco_root / split / name, out_dir / "images" / name)

    def subset(data: dict) -> dict:  # keeps info, licenses, categories and any other top-level key untouched
        return {**data, "images": [i for i in data["images"] if isinstance(i, dict) and i.get("id") in keep],
                "annotations": [a for a in data["annotations"] if isinstance(a, dict) and a.get("image_id") in keep]}

    cap_out, inst_out = annotation_paths(out_dir, split)
    cap_out.parent.mkdir(parents=True, exist_ok=True)
    cap_sub, inst_sub = subset(captions), subset(instances)
    write_json(cap_out, cap_sub)
    write_json(inst_out, inst_sub)
    return {"images": len(chosen), "captions": len(cap_sub["annotations"]),
            "instances": len(inst_sub["annotations"]), "skipped": skipped}


def prepare_coco(split: str, limit: int | None, out_dir: str | Path, seed: int = 0, base_url: str | None = None,
                 cache_dir: str | Path | None = None, skip_bad: bool = False, progress: bool = True) -> dict:
    """Download and extract ``split`` and the annotations (each only once), then write the subset to ``out_dir``.

    Returns ``{"images", "captions", "instances", "skipped"}`` counts for the subset.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown COCO split {split!r}; expected one of {', '.join(SPLITS)}")
    base = (base_url or os.environ.get("MINILLAVA_COCO_URL") or BASE_URL).rstrip("/")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    for name in (f"{split}.zip", ANNOTATIONS_ZIP):
        if _marker(cache, name).exists():
            continue  # extracted before: no need to re-verify (md5 of 19 GB) or even keep the zip
        spec = FILES[name]
        zip_path = download(f"{base}/{spec.path}", cache / "zips" / name, size=spec.size, md5=spec.md5,
                            progress=progress)
        extract(zip_path, cache, progress=progress)
    return make_subset(cache, split, out_dir, limit, seed, skip_bad=skip_bad)
