"""ShareGPT-style reader: real prompts, multi-turn sessions carrying their history, exact errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadgen.config import LengthDist, WorkloadConfig
from loadgen.workload import WorkloadError, load
from traces import TRACES, needs_traces

SAMPLE = TRACES / "sharegpt_v3_filtered_500.json"


def _msg(role: str, value: str) -> dict:
    return {"from": role, "value": value}


def _write(tmp_path: Path, convs: list, name: str = "c.json") -> Path:
    """A JSON array with conversation i on line i + 2."""
    path = tmp_path / name
    path.write_text("[\n" + ",\n".join(json.dumps(c) for c in convs) + "\n]\n")
    return path


MULTI = [
    {
        "id": "a",
        "conversations": [
            _msg("human", "what is a prefix cache"),
            _msg("gpt", "it keeps computed attention state\nfor shared prompt starts"),
            _msg("human", "why does it help"),
            _msg("gpt", "less prefill work"),
            _msg("human", "thanks"),
        ],
    },
    {"id": "b", "conversations": [_msg("system", "be brief"), _msg("human", "one two"), _msg("gpt", "three")]},
    {"id": "c", "conversations": []},
]


@needs_traces
def test_sample_prompts_are_the_source_text():
    source = json.loads(SAMPLE.read_text())
    w = load(WorkloadConfig(kind="sharegpt", path=str(SAMPLE), output_tokens=LengthDist(mean=77)))
    t = w.table
    assert t.num_rows == 500 and w.rows_read == 500
    prompts = t.column("prompt").to_pylist()
    assert prompts == [c["conversations"][0]["value"] for c in source]
    lengths = np.array([len(p) for p in prompts])
    assert np.percentile(lengths, 50) == 119.5 and lengths.max() == 3440  # README: characters
    assert np.percentile(lengths, 99) == pytest.approx(2788, abs=1)
    assert t.column("input_tokens").to_pylist() == [len(p.split()) for p in prompts]
    assert set(t.column("output_tokens").to_pylist()) == {77}  # no replies: drawn from output_tokens
    assert set(t.column("turn").to_pylist()) == {0}
    assert t.column("arrival_s").null_count == 500
    assert len(set(t.column("session_id").to_pylist())) == 500


def test_turns_carry_the_whole_conversation(tmp_path):
    w = load(WorkloadConfig(kind="sharegpt", path=str(_write(tmp_path, MULTI)), output_tokens=LengthDist(mean=9)))
    rows = w.table.to_pylist()
    assert [r["request_id"] for r in rows] == ["s000000-t0", "s000000-t1", "s000000-t2", "s000001-t0"]
    t0, t1, t2 = rows[:3]
    assert t0["messages"] == [{"role": "user", "content": "what is a prefix cache"}]
    assert t1["messages"] == t0["messages"] + [
        {"role": "assistant", "content": "it keeps computed attention state\nfor shared prompt starts"},
        {"role": "user", "content": "why does it help"},
    ]
    assert t2["messages"][:3] == t1["messages"]
    assert t2["messages"][3:] == [{"role": "assistant", "content": "less prefill work"}, {"role": "user", "content": "thanks"}]
    assert t1["prompt"].startswith(t0["prompt"] + "\n") and t2["prompt"].startswith(t1["prompt"] + "\n")
    assert [r["output_tokens"] for r in rows] == [9, 3, 9, 1]  # reply word counts; drawn when no reply
    assert [r["input_tokens"] for r in rows] == [len(r["prompt"].split()) for r in rows]
    assert [r["arrival_s"] for r in rows] == [None] * 4
    assert any("1 system messages dropped" in n for n in w.notes)
    assert any("conversations without a human turn: removed 1" in n for n in w.notes)


def test_max_turns_and_input_cap(tmp_path):
    path = _write(tmp_path, MULTI)
    w = load(WorkloadConfig(kind="sharegpt", path=str(path), max_turns=2))
    assert w.table.column("request_id").to_pylist() == ["s000000-t0", "s000000-t1", "s000001-t0"]
    assert any("workload.max_turns=2 (later turns): removed 1" in n for n in w.notes)
    w = load(WorkloadConfig(kind="sharegpt", path=str(path), max_input_tokens=16))
    t1 = w.table.to_pylist()[1]
    assert t1["input_tokens"] == 16  # 5 + 9 words of history, the new turn cut to 2 words
    assert t1["messages"][-1] == {"role": "user", "content": "why does"}
    assert any("1 trace turns cut" in n for n in w.notes)


def test_jsonl_conversations_and_merged_roles(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [
        {"id": "x", "conversations": [_msg("gpt", "hello"), _msg("user", "a"), _msg("human", "b"), _msg("assistant", "c d")]},
        {"id": "y", "conversations": [_msg("human", "e f g")]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    w = load(WorkloadConfig(kind="sharegpt", path=str(path)))
    rows = w.table.to_pylist()
    assert rows[0]["messages"] == [{"role": "user", "content": "a\nb"}]
    assert rows[0]["output_tokens"] == 2
    assert rows[1]["prompt"] == "e f g"
    assert any("leading model messages dropped" in n for n in w.notes)


@pytest.mark.parametrize(
    "convs, message",
    [
        (
            [MULTI[1], {"id": "z", "conversations": [_msg("human", "hi"), _msg("robot", "beep")]}],
            "c.json line 3, field conversations[1].from: expected human or gpt (or user, assistant, system), got 'robot'",
        ),
        (
            [MULTI[1], {"id": "z", "conversations": [_msg("human", 42)]}],
            "c.json line 3, field conversations[0].value: expected a string, got 42",
        ),
        (
            [MULTI[1], {"id": "z"}],
            "c.json line 3, field conversations: expected a list of {from, value} messages, got nothing (missing)",
        ),
    ],
)
def test_malformed_conversations_name_file_line_and_field(tmp_path, convs, message):
    with pytest.raises(WorkloadError) as exc:
        load(WorkloadConfig(kind="sharegpt", path=str(_write(tmp_path, convs))))
    assert str(exc.value) == message


def test_truncated_json_array_is_an_error_with_its_line(tmp_path):
    path = _write(tmp_path, MULTI[:2] + [MULTI[1]])
    text = path.read_text()
    path.write_text(text[: text.rindex("three")])  # cut inside the string on line 4
    with pytest.raises(WorkloadError) as exc:
        load(WorkloadConfig(kind="sharegpt", path=str(path)))
    assert str(exc.value) == (
        "c.json line 4: expected a complete JSON value, got invalid JSON (unterminated string starting at)"
    )


def test_skip_mode_counts_bad_conversations(tmp_path):
    convs = [MULTI[1], {"id": "z", "conversations": [_msg("robot", "beep")]}, {"id": "w", "conversations": "no"}, MULTI[0]]
    w = load(WorkloadConfig(kind="sharegpt", path=str(_write(tmp_path, convs)), on_error="skip"))
    assert w.table.column("session_id").to_pylist() == ["s000000", "s000003", "s000003", "s000003"]
    assert w.skipped == {
        "conversations[0].from: expected human or gpt (or user, assistant, system)": 1,
        "conversations: expected a list of {from, value} messages": 1,
    }
