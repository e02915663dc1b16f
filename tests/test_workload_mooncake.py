"""Mooncake reader: published statistics, byte-identical shared prefixes, exact errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadgen.config import WorkloadConfig
from loadgen.workload import WorkloadError, load, read_rows
from loadgen.workload.prompts import Synthesizer
from traces import TRACES, needs_traces

SLICE = TRACES / "mooncake_trace_first1000.jsonl"


def _jsonl(tmp_path: Path, rows: list, name: str = "m.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _req(ts, n_in, n_out, ids):
    return {"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": ids}


def _common_words(a: str, b: str) -> int:
    x, y = a.split(" "), b.split(" ")
    n = min(len(x), len(y))
    return next((i for i in range(n) if x[i] != y[i]), n)


def _common_blocks(a: list, b: list) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


@needs_traces
def test_slice_matches_published_statistics():
    _, rows, _ = read_rows(WorkloadConfig(kind="mooncake", path=str(SLICE)))
    assert rows.num_rows == 1000
    arrival = rows.column("arrival_s").to_numpy()
    assert arrival[0] == 0.0 and arrival[-1] == pytest.approx(177.098)
    assert 1000 / arrival[-1] == pytest.approx(5.65, abs=0.005)
    assert np.bincount(np.floor(arrival).astype(int)).max() == 26  # peak 1 s
    inputs, outputs = rows.column("input_tokens").to_numpy(), rows.column("output_tokens").to_numpy()
    assert np.percentile(inputs, 50) == pytest.approx(6558, abs=0.5)
    assert np.percentile(inputs, 99) == pytest.approx(77828, abs=1)
    assert inputs.mean() == pytest.approx(9792, abs=1) and inputs.max() == 121290
    assert np.percentile(outputs, 50) == 34 and np.percentile(outputs, 99) == pytest.approx(831, abs=1)
    blocks = rows.column("hash_ids").to_pylist()
    assert sum(map(len, blocks)) == 19686
    assert len({h for ids in blocks for h in ids}) == 12207


@needs_traces
def test_shared_hash_ids_give_byte_identical_prefixes_on_the_real_slice():
    cfg = WorkloadConfig(kind="mooncake", path=str(SLICE), end_s=4.0)
    t = load(cfg).table
    hashes = read_rows(cfg)[1].column("hash_ids").to_pylist()
    prompts = t.column("prompt").to_pylist()
    words = [p.split(" ") for p in prompts]
    assert 20 < t.num_rows < 200
    assert [len(w) for w in words] == t.column("input_tokens").to_pylist()
    shared_pairs = 0
    for i in range(len(prompts)):
        for j in range(i + 1, len(prompts)):
            k = _common_blocks(hashes[i], hashes[j])
            if k == 0:
                continue
            if hashes[i] == hashes[j] and len(words[i]) == len(words[j]):
                assert prompts[i] == prompts[j]  # the trace says these are the same prompt
                continue
            full = min(k, len(words[i]) // 512, len(words[j]) // 512)
            cut = len(" ".join(words[i][: 512 * full]))
            assert prompts[i][:cut] == prompts[j][:cut]
            # Nothing is shared past the shared blocks.
            assert words[i][512 * k : 512 * k + 16] != words[j][512 * k : 512 * k + 16]
            shared_pairs += full > 0
    assert shared_pairs > 10
    groups = t.column("prefix_group").to_pylist()
    assert groups[0] == str(hashes[0][0])
    unshared = [g for g, h in zip(groups, hashes) if sum(x[:1] == h[:1] for x in hashes) == 1]
    assert all(g is None for g in unshared)


def test_prefix_blocks_are_shared_and_the_rest_is_unique(tmp_path):
    path = _jsonl(
        tmp_path,
        [
            _req(0, 1200, 5, [1, 2, 3]),
            _req(0, 1100, 5, [1, 2, 4]),
            _req(1000, 100, 5, [5]),
            _req(2000, 700, 5, [1, 6]),
        ],
    )
    w = load(WorkloadConfig(kind="mooncake", path=str(path), seed=3))
    a, b, c, d = w.table.column("prompt").to_pylist()
    synth = Synthesizer(3)
    blocks = synth.block(1) + " " + synth.block(2) + " "
    assert a.startswith(blocks) and b.startswith(blocks)
    assert _common_words(a, b) == 1024
    assert d.startswith(synth.block(1) + " ") and _common_words(a, d) == 512
    assert _common_words(a, c) < 3
    assert [len(p.split()) for p in (a, b, c, d)] == [1200, 1100, 100, 700]
    assert w.table.column("prefix_group").to_pylist() == ["1", "1", None, "1"]
    assert w.table.column("arrival_s").to_pylist() == [0.0, 0.0, 1.0, 2.0]


def test_clipped_inputs_keep_their_leading_blocks(tmp_path):
    path = _jsonl(tmp_path, [_req(0, 1200, 5, [1, 2, 3]), _req(0, 1300, 5, [1, 2, 7])])
    w = load(WorkloadConfig(kind="mooncake", path=str(path), max_input_tokens=600))
    a, b = w.table.column("prompt").to_pylist()
    assert len(a.split()) == len(b.split()) == 600
    # Only block 1 is whole within 600 tokens; the rest is the start of block 2's own text.
    assert _common_words(a, b) == 600


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"timestamp": 5, "inp', "m.jsonl line 3: expected a complete JSON object, got '{\"timestamp\": 5, \"inp'"),
        ({"timestamp": 5, "output_length": 3, "hash_ids": []}, "m.jsonl line 3, field input_length: expected a non-negative integer, got nothing (missing)"),
        (_req(5, 10, -2, []), "m.jsonl line 3, field output_length: expected a non-negative integer, got -2"),
        (_req(5, "12", 2, []), "m.jsonl line 3, field input_length: expected a non-negative integer, got '12'"),
        (_req(5, 10, 2, [1, "x"]), "m.jsonl line 3, field hash_ids: expected a list of non-negative integers, got [1, 'x']"),
        (_req(0.5, 10, 2, []), "m.jsonl line 3, field timestamp: expected a time no earlier than the lines before it (the file is sorted), got 0.5"),
        ("[1, 2]", "m.jsonl line 3: expected a JSON object, got a JSON list"),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, bad, message):
    path = _jsonl(tmp_path, [_req(0, 10, 2, [1]), _req(1, 10, 2, [2]), bad])
    with pytest.raises(WorkloadError) as exc:
        read_rows(WorkloadConfig(kind="mooncake", path=str(path)))
    assert str(exc.value) == message


def test_skip_mode_counts_and_blank_lines_keep_line_numbers(tmp_path):
    path = _jsonl(tmp_path, [_req(0, 10, 2, [1]), "", '{"timestamp": 5', _req(6, -1, 2, []), _req(7, 10, 2, [3])])
    w = load(WorkloadConfig(kind="mooncake", path=str(path), on_error="skip"))
    assert w.table.column("request_id").to_pylist() == ["r000000", "r000004"]  # 0-based line numbers
    assert w.skipped == {"expected a complete JSON object": 1, "input_length: expected a non-negative integer": 1}
    with pytest.raises(WorkloadError, match="m.jsonl line 3: expected a complete JSON object"):
        load(WorkloadConfig(kind="mooncake", path=str(path)))
