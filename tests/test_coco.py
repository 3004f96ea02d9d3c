"""COCO download + subset against a tiny fake COCO served from 127.0.0.1 (no real network)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from minillava.data import coco
from minillava.data.records import DataError, load_split

CAPTIONED = [139, 285, 632, 724, 776, 785]  # 776 has captions but no instances, which is allowed
UNCAPTIONED = 802                           # listed in the instances file but never chosen
CATEGORIES = [{"supercategory": "person", "id": 1, "name": "person"},
              {"supercategory": "animal", "id": 18, "name": "dog"}]


def _fake_coco() -> dict[str, bytes]:
    """The two zips of a six-image COCO 'val2017', keyed by their URL path, in COCO's own structure."""
    info = {"description": "fake COCO 2017", "url": "http://cocodataset.org", "version": "1.0", "year": 2017,
            "contributor": "COCO Consortium", "date_created": "2017/09/01"}
    licenses = [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}]
    images, captions, instances, pictures = [], [], [], io.BytesIO()
    with zipfile.ZipFile(pictures, "w") as zf:
        for i, image_id in enumerate(CAPTIONED + [UNCAPTIONED]):
            name = f"{image_id:012d}.jpg"
            jpeg = io.BytesIO()
            Image.new("RGB", (32, 24), (30 * i, 120, 200)).save(jpeg, format="JPEG")
            zf.writestr(f"val2017/{name}", jpeg.getvalue())
            images.append({"license": 4, "file_name": name, "coco_url": f"http://images.cocodataset.org/val2017/{name}",
                           "height": 24, "width": 32, "date_captured": "2013-11-14 17:02:52", "id": image_id})
            if image_id in CAPTIONED:
                for k in range(2):
                    captions.append({"image_id": image_id, "id": 1000 + len(captions), "caption": f"Picture {i} #{k}."})
            if image_id != 776:
                for cat in ([1, 18] if i % 2 else [1]):
                    x, y, w, h = 2.0 + i, 3.0, 10.0, 8.0
                    instances.append({"segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "area": w * h,
                                      "iscrowd": 0, "image_id": image_id, "bbox": [x, y, w, h], "category_id": cat,
                                      "id": 5000 + len(instances)})
    base = {"info": info, "licenses": licenses, "images": images}
    annotations = io.BytesIO()
    with zipfile.ZipFile(annotations, "w") as zf:
        zf.writestr("annotations/captions_val2017.json", json.dumps({**base, "annotations": captions}))
        zf.writestr("annotations/instances_val2017.json",
                    json.dumps({**base, "annotations": instances, "categories": CATEGORIES}))
    return {"/zips/val2017.zip": pictures.getvalue(),
            "/annotations/annotations_trainval2017.zip": annotations.getvalue()}


class _State:
    def __init__(self):
        self.files = _fake_coco()
        self.files["/blob.bin"] = os.urandom(300_000)
        self.reset()

    def reset(self):
        self.drops = 0            # the next N responses send half the body, then hang up
        self.ignore_range = False  # answer 200 with the whole file even when asked for a range
        self.requests: list[tuple[str, str | None]] = []


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        state: _State = self.server.state
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not state.ignore_range:
            start, status = int(match.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if state.drops > 0:
            state.drops -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def _server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.state = _State()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def point_coco_at(server, monkeypatch) -> None:
    """Proxies bypassed for 127.0.0.1 and coco.FILES matched (size, md5) to the files ``server`` serves."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name, spec in list(coco.FILES.items()):
        data = server.state.files.get("/" + spec.path)
        if data is not None:
            monkeypatch.setitem(coco.FILES, name, coco.RemoteFile(spec.path, len(data), hashlib.md5(data).hexdigest()))
    server.url = f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def server(_server, monkeypatch):
    """The local server, freshly reset; proxies bypassed, progress bars off, the table matched to the fakes."""
    _server.state.reset()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    point_coco_at(_server, monkeypatch)
    return _server


def _blob(server):
    data = server.state.files["/blob.bin"]
    return data, f"{server.url}/blob.bin", hashlib.md5(data).hexdigest()


def test_full_download_verifies_and_renames(server, tmp_path):
    data, url, md5 = _blob(server)
    path = coco.download(url, tmp_path / "blob.bin", size=len(data), md5=md5)
    assert path.read_bytes() == data
    assert not (tmp_path / "blob.bin.part").exists()
    n = len(server.state.requests)
    coco.download(url, path, size=len(data), md5=md5)  # verified final file: no request at all
    assert len(server.state.requests) == n


def test_resume_after_dropped_connection(server, tmp_path):
    data, url, md5 = _blob(server)
    server.state.drops = 2
    path = coco.download(url, tmp_path / "blob.bin", size=len(data), md5=md5, backoff=0.0)
    assert path.read_bytes() == data
    ranges = [r for _, r in server.state.requests if r]
    assert len(server.state.requests) == 3 and len(ranges) == 2
    assert ranges[0] == f"bytes={len(data) // 2}-"


def test_resume_from_part_on_disk(server, tmp_path):
    data, url, md5 = _blob(server)
    (tmp_path / "blob.bin.part").write_bytes(data[:1234])
    coco.download(url, tmp_path / "blob.bin", size=len(data), md5=md5)
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert server.state.requests == [("/blob.bin", "bytes=1234-")]


def test_complete_part_without_known_size_gets_416(server, tmp_path):
    data, url, md5 = _blob(server)
    (tmp_path / "blob.bin.part").write_bytes(data)
    coco.download(url, tmp_path / "blob.bin", md5=md5)
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data, url, md5 = _blob(server)
    server.state.ignore_range = True
    server.state.drops = 1
    (tmp_path / "blob.bin.part").write_bytes(data[:999])
    coco.download(url, tmp_path / "blob.bin", size=len(data), md5=md5, backoff=0.0)
    assert (tmp_path / "blob.bin").read_bytes() == data  # no duplicated bytes
    assert all(r for _, r in server.state.requests)  # it did ask for ranges each time


def test_gives_up_after_retries_and_keeps_part(server, tmp_path):
    data, url, _ = _blob(server)
    server.state.ignore_range = True  # every answer restarts from zero and drops at half: no progress
    server.state.drops = 100
    with pytest.raises(DataError, match=r"blob\.bin: download .* failed 3 times"):
        coco.download(url, tmp_path / "blob.bin", size=len(data), retries=2, backoff=0.0)
    assert (tmp_path / "blob.bin.part").stat().st_size == len(data) // 2


@pytest.mark.parametrize("kind", ["size", "md5"])
def test_mismatch_deletes_and_names_the_file(server, tmp_path, kind):
    data, url, md5 = _blob(server)
    bad = {"size": {"size": len(data) + 1, "md5": md5}, "md5": {"size": len(data), "md5": "0" * 32}}[kind]
    with pytest.raises(DataError) as err:
        coco.download(url, tmp_path / "blob.bin", **bad)
    message = str(err.value)
    assert "\n" not in message and message.startswith("blob.bin: ") and f"{kind} mismatch" in message
    assert ("0" * 32 in message and md5 in message) if kind == "md5" else f"{len(data) + 1}" in message
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / "blob.bin.part").exists()


def test_http_404_is_a_one_line_error(server, tmp_path):
    with pytest.raises(DataError, match=r"^missing\.zip: .* HTTP 404"):
        coco.download(f"{server.url}/missing.zip", tmp_path / "missing.zip")


@pytest.fixture
def coco_root(server, tmp_path):
    """The fake COCO downloaded and extracted, as prepare_coco leaves it in the cache."""
    cache = tmp_path / "cache"
    for name in ("val2017.zip", coco.ANNOTATIONS_ZIP):
        spec = coco.FILES[name]
        coco.extract(coco.download(f"{server.url}/{spec.path}", cache / "zips" / name, size=spec.size, md5=spec.md5),
                     cache)
    return cache


def _ids(out):
    data = json.loads((out / "annotations" / "instances_val2017.json").read_text())
    return sorted(img["id"] for img in data["images"])


def _subset(coco_root, out, limit, seed, **kwargs):
    summary = coco.make_subset(coco_root, "val2017", out, limit, seed, **kwargs)
    return summary, _ids(out)


def test_subset_is_reproducible_per_seed(coco_root, tmp_path):
    summary, ids = _subset(coco_root, tmp_path / "a", 3, seed=0)
    assert summary["images"] == 3 and summary["skipped"] == 0
    assert _subset(coco_root, tmp_path / "b", 3, seed=0)[1] == ids
    others = {tuple(_subset(coco_root, tmp_path / f"s{s}", 3, seed=s)[1]) for s in range(1, 6)}
    assert others - {tuple(ids)}, "other seeds should draw other subsets"
    assert _subset(coco_root, tmp_path / "all", None, seed=0)[1] == CAPTIONED  # never the uncaptioned image


def test_subset_is_genuine_coco(coco_root, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "sub"
    summary = coco.make_subset(coco_root, "val2017", out, 4, seed=7)
    caps = COCO(str(out / "annotations" / "captions_val2017.json"))
    inst = COCO(str(out / "annotations" / "instances_val2017.json"))
    assert sorted(caps.getImgIds()) == sorted(inst.getImgIds()) == _ids(out)
    assert sorted(inst.getCatIds()) == [1, 18] and inst.loadCats(18)[0]["name"] == "dog"
    assert len(caps.getAnnIds()) == summary["captions"] == 8 and len(inst.getAnnIds()) == summary["instances"]
    data = json.loads((out / "annotations" / "instances_val2017.json").read_text())
    assert data["info"]["description"] == "fake COCO 2017" and data["licenses"][0]["id"] == 4

    records = load_split(out, "val2017", check_images=True)
    assert [r.image_id for r in records] == _ids(out)
    assert all(len(r.captions) == 2 for r in records)
    assert {o.category for r in records for o in r.objects} <= {"person", "dog"}
    src = coco_root / "val2017" / records[0].file_name
    assert os.path.samefile(out / "images" / records[0].file_name, src)  # hardlinked on the same filesystem


def test_bad_source_image_raises_or_is_skipped(coco_root, tmp_path):
    chosen = _subset(coco_root, tmp_path / "a", 2, seed=3)[1]
    victim = f"{chosen[0]:012d}.jpg"
    (coco_root / "val2017" / victim).write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as err:
        coco.make_subset(coco_root, "val2017", tmp_path / "b", 2, seed=3)
    assert victim in str(err.value) and f"image id={chosen[0]}" in str(err.value) and "\n" not in str(err.value)
    summary, ids = _subset(coco_root, tmp_path / "c", 2, seed=3, skip_bad=True)
    assert summary["skipped"] == 1 and summary["images"] == 2 and chosen[0] not in ids


def test_prepare_coco_twice_downloads_once(server, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    first = coco.prepare_coco("val2017", 4, out, seed=1, base_url=server.url, cache_dir=cache)
    assert first == {"images": 4, "captions": 8, "instances": first["instances"], "skipped": 0}
    assert len(server.state.requests) == 2
    second = coco.prepare_coco("val2017", 4, out, seed=1, base_url=server.url, cache_dir=cache)
    assert second == first and len(server.state.requests) == 2  # nothing downloaded the second time
    assert len(load_split(out, "val2017")) == 4


def test_prepare_coco_env_overrides_and_redone_extraction(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLAVA_COCO_URL", server.url + "/")
    monkeypatch.setenv("MINILLAVA_CACHE", str(tmp_path / "mc"))
    assert coco.default_cache_dir() == tmp_path / "mc" / "coco"
    coco.prepare_coco("val2017", 2, tmp_path / "out", progress=False)
    cache = tmp_path / "mc" / "coco"
    assert (cache / "zips" / "val2017.zip").exists() and (cache / ".val2017.zip.extracted").exists()
    # an extraction interrupted before its marker is redone from the zip already on disk
    (cache / ".val2017.zip.extracted").unlink()
    for picture in (cache / "val2017").iterdir():
        picture.unlink()
    n = len(server.state.requests)
    assert coco.prepare_coco("val2017", 2, tmp_path / "out2")["images"] == 2
    assert len(server.state.requests) == n


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="test2017"):
        coco.prepare_coco("test2017", 1, tmp_path)
