"""The record schema, the record buffer and the crash-safe part writer."""

from __future__ import annotations

import pyarrow.parquet as pq

from loadgen.rundir import RECORD_SCHEMA, PartWriter, RecordBuffer, part_dir, read_records, to_batch


def test_buffer_round_trips_records_including_chunk_lists():
    buf = RecordBuffer()
    buf.append({"request_id": "a", "level": 1, "chunk_ns": [10, 20, 35], "status": "ok", "output_tokens": 3})
    buf.append({"request_id": "b", "level": 1, "status": "http_error", "http_status": 503})
    buf.append({"request_id": "c", "level": 1, "chunk_ns": [7], "status": "ok"})
    assert len(buf) == 3
    batch = to_batch(buf.take())
    assert batch.schema == RECORD_SCHEMA
    assert batch.column("chunk_ns").to_pylist() == [[10, 20, 35], [], [7]]
    assert batch.column("http_status").to_pylist() == [None, 503, None]
    assert batch.column("request_id").to_pylist() == ["a", "b", "c"]
    assert len(buf) == 0 and buf.take() is None  # taking empties it


def test_part_writer_leaves_only_complete_parts_and_reader_skips_temporaries(tmp_path):
    root = tmp_path / "records"
    writer = PartWriter(part_dir(str(root), 0, 3))
    for k in range(3):
        buf = RecordBuffer()
        buf.append({"request_id": f"r{k}", "level": 0, "worker_id": 3, "chunk_ns": [k]})
        writer.write(to_batch(buf.take()))
    parts = sorted((root / "level=0" / "worker=3").iterdir())
    assert [p.name.startswith("part-0000") for p in parts] == [True] * 3
    assert writer.rows == 3 and writer.parts == 3
    for p in parts:
        assert pq.read_table(p).num_rows == 1  # every part on disk is complete
    # A part a crash left half-written keeps its temporary name and is never read as data.
    (root / "level=0" / "worker=3" / ".part-00009-dead.parquet.tmp").write_bytes(b"PAR1 truncated")
    table = read_records(str(tmp_path))
    assert sorted(table.column("request_id").to_pylist()) == ["r0", "r1", "r2"]


def test_reading_a_run_without_records_gives_an_empty_table(tmp_path):
    assert read_records(str(tmp_path)).num_rows == 0
