"""Bad data gets a one-line error naming the file, the record and the field, or a counted skip when asked."""

import json

import pytest

from minillava.cli import main
from minillava.data.llava_json import read_llava_json
from minillava.data.records import DataError, load_split
from minillava.data.shapes import write_shapes_dataset


@pytest.fixture()
def scenes(tmp_path):
    write_shapes_dataset(tmp_path, 20, seed=0)
    return tmp_path


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _one_line(err: Exception, *needles: str) -> None:
    text = str(err)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, (needle, text)


def test_missing_and_corrupt_images_are_named(scenes):
    records = load_split(scenes, "train")
    (scenes / "images" / records[0].file_name).unlink()
    (scenes / "images" / records[1].file_name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError) as err:
        load_split(scenes, "train", check_images=True)
    _one_line(err.value, records[0].file_name, "not found", f"image id={records[0].image_id}")
    skipped = []
    kept = load_split(scenes, "train", check_images=True, skip_bad=True, skipped=skipped)
    assert len(kept) == len(records) - 2 and len(skipped) == 2
    assert records[1].file_name in skipped[1] and "cannot decode" in skipped[1]


def test_truncated_annotation_file(scenes):
    path = scenes / "annotations" / "instances_train.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(DataError) as err:
        load_split(scenes, "train")
    _one_line(err.value, "instances_train.json", "invalid JSON", "line 1")


def test_schema_violations_name_record_and_field(scenes):
    path = scenes / "annotations" / "instances_train.json"
    _edit(path, lambda d: d["annotations"][3].pop("bbox"))
    with pytest.raises(DataError) as err:
        load_split(scenes, "train")
    _one_line(err.value, "instances_train.json", "annotations[3]", "'bbox'")
    _edit(path, lambda d: d.pop("images"))
    with pytest.raises(DataError) as err:
        load_split(scenes, "train")
    _one_line(err.value, "'images'")


def test_unknown_category_and_image_without_captions(scenes):
    inst = scenes / "annotations" / "instances_train.json"
    caps = scenes / "annotations" / "captions_train.json"
    _edit(inst, lambda d: d["annotations"][0].update(category_id=999))
    _edit(caps, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 5]))
    with pytest.raises(DataError) as err:
        load_split(scenes, "train")
    _one_line(err.value, "category_id", "999", "annotations[0]")
    skipped = []
    kept = load_split(scenes, "train", skip_bad=True, skipped=skipped)
    assert len(skipped) == 2 and "no captions" in skipped[1] and "id=5" in skipped[1]
    assert len(kept) == 14


def test_llava_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe not utf8")
    with pytest.raises(DataError, match="not UTF-8"):
        read_llava_json(bad)
    bad.write_text(json.dumps([{"id": "a", "image": "x.png", "conversations": []},
                               {"id": "b", "image": "x.png", "conversations": [
                                   {"from": "human", "value": "<image>\n<image>\nQ"}, {"from": "gpt", "value": "A"}]},
                               {"id": "c", "image": "x.png", "conversations": [
                                   {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
                               {"id": "d", "image": "x.png", "conversations": [
                                   {"from": "human", "value": "<image>\nQ"}, {"from": "human", "value": "A"}]}]))
    with pytest.raises(DataError) as err:
        read_llava_json(bad)
    _one_line(err.value, "record 0", "id=a", "'conversations'")
    skipped = []
    assert read_llava_json(bad, skip_bad=True, skipped=skipped) == []
    assert [s.split("(id=")[1][0] for s in skipped] == ["a", "b", "c", "d"]
    assert "found 2" in skipped[1] and "found 0" in skipped[2] and "'from'" in skipped[3]


def test_cli_reports_one_line_or_counted_skips(scenes, tmp_path, capsys):
    (scenes / "images" / "train_000002.png").write_bytes(b"not a png")
    out = tmp_path / "instruct.json"
    assert main(["data", "instruct", "--coco", str(scenes), "--split", "train", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train_000002.png" in err
    assert main(["data", "instruct", "--coco", str(scenes), "--split", "train", "--out", str(out), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 bad records" in captured.out and "train_000002.png" in captured.err
    assert len(read_llava_json(out)) == 3 * 15
