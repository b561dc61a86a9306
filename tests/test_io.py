"""mathrl.io: JSONL round trip, torn tails, malformed lines, NaN rejection; atomic rewrite."""

import json
import math

import pytest

from mathrl.errors import DataError
from mathrl.io import append_jsonl, read_jsonl, write_jsonl


def record(i: int, **overrides) -> dict:
    rec = dict(
        iter=i,
        step=i * 2,
        prompt_id=f"p{i:04x}",
        task="gsm8k",
        messages=[{"role": "user", "content": "What is 2+2? ✓"}],
        completion="4\nFinal: 4",
        completion_tokens=5,
        finish_reason="eos",
        reward=1.0,
        reward_components={"correct": 1.0, "format": 0.5},
        pred="4",
        gold="4",
        correct=True,
        group_id=i // 4,
        extras={},
    )
    rec.update(overrides)
    return rec


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "rollouts.jsonl"
    append_jsonl(path, [record(0), record(1)])
    append_jsonl(path, [record(2)])
    append_jsonl(path, [])
    assert read_jsonl(path) == [record(0), record(1), record(2)]
    assert path.read_bytes().count(b"\n") == 3
    assert read_jsonl(path)[0]["extras"] == {}


def test_torn_last_line_skipped_then_next_append_starts_clean(tmp_path):
    path = tmp_path / "r.jsonl"
    append_jsonl(path, [record(0), record(1)])
    with open(path, "ab") as f:  # a crash mid-write: half a record, no newline
        f.write(json.dumps(record(2)).encode()[:40])
    with pytest.warns(UserWarning, match="torn last line"):
        assert read_jsonl(path) == [record(0), record(1)]
    with pytest.warns(UserWarning, match="dropping a torn last line"):
        append_jsonl(path, [record(3)])
    assert read_jsonl(path) == [record(0), record(1), record(3)]
    assert path.read_bytes().endswith(b"\n")


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(0)))
    assert read_jsonl(path) == [record(0)]
    append_jsonl(path, [record(1)])
    assert read_jsonl(path) == [record(0), record(1)]


def test_file_that_is_only_a_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"iter": 0, "ste')
    with pytest.warns(UserWarning):
        assert read_jsonl(path) == []
    with pytest.warns(UserWarning):
        append_jsonl(path, [record(1)])
    assert read_jsonl(path) == [record(1)]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"iter": 1, "ste', "malformed JSON"),
        ("not json at all", "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"a": NaN', "malformed JSON"),
    ],
)
def test_malformed_middle_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "r.jsonl"
    good = json.dumps(record(0))
    path.write_text(f"{good}\n\n{bad_line}\n{good}\n")
    with pytest.raises(DataError, match=rf"r\.jsonl:3: {message}"):
        read_jsonl(path)


def test_empty_lines_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(f"\n{json.dumps(record(0))}\n   \n{json.dumps(record(1))}\n")
    assert read_jsonl(path) == [record(0), record(1)]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"reward": math.nan}, "reward"),
        ({"reward": math.inf}, "reward"),
        ({"reward_components": {"correct": 1.0, "format": -math.inf}}, "reward_components.format"),
        ({"extras": {"lens": [1.0, math.nan]}}, "extras.lens.1"),
        ({"extras": {"obj": object()}}, "extras.obj"),
    ],
)
def test_unwritable_values_rejected_before_writing(tmp_path, overrides, field):
    path = tmp_path / "r.jsonl"
    append_jsonl(path, [record(0)])
    with pytest.raises(DataError, match=rf"record 1, field '{field}'"):
        append_jsonl(path, [record(1), record(2, **overrides)])
    assert read_jsonl(path) == [record(0)]  # nothing of the failed batch was written


def test_scalar_objects_with_item_are_converted(tmp_path):
    class Scalar:
        def item(self):
            return 0.25

    path = tmp_path / "r.jsonl"
    append_jsonl(path, [{"reward": Scalar()}])
    assert read_jsonl(path) == [{"reward": 0.25}]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_write_jsonl_replaces_whole_file_and_refuses_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [record(0), record(1), record(2)])
    write_jsonl(path, [record(0)])
    assert read_jsonl(path) == [record(0)]
    with pytest.raises(DataError, match="field 'reward'"):
        write_jsonl(path, [record(1, reward=math.nan)])
    assert read_jsonl(path) == [record(0)]  # the failed rewrite left the old file whole
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
