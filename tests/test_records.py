"""The record schema, the record buffer and the crash-safe part writer."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from loadgen.rundir import (
    RECORD_SCHEMA,
    SERVER_METRICS_SCHEMA,
    TELEMETRY_SCHEMA,
    PartWriter,
    RecordBuffer,
    part_dir,
    read_level,
    read_records,
    to_batch,
)
from loadgen.rundir.read import iter_level_tables, worker_statuses


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
    where = part_dir(str(root), 0, 3)
    parts = [Path(p) for p in where.files()]
    assert [p.name.startswith(f"{where.prefix}-0000") for p in parts] == [True] * 3
    assert writer.rows == 3 and writer.parts == 3
    assert sorted(p.name for p in root.iterdir()) == [p.name for p in parts]  # flat: files, no directories
    for p in parts:
        assert pq.read_table(p).num_rows == 1  # every part on disk is complete
    # A part a crash left half-written keeps its temporary name and is never read as data.
    (Path(where.dir) / f".{where.name(9, 'dead')}.tmp").write_bytes(b"PAR1 truncated")
    table = read_records(str(tmp_path))
    assert sorted(table.column("request_id").to_pylist()) == ["r0", "r1", "r2"]


def test_reading_a_run_without_records_gives_an_empty_table(tmp_path):
    assert read_records(str(tmp_path)).num_rows == 0


def test_every_time_column_says_its_unit_and_clock_in_the_parquet_field_metadata(tmp_path):
    buf = RecordBuffer()
    buf.append({"request_id": "a", "sent_ns": 1, "chunk_ns": [2], "status": "ok"})
    path = PartWriter(str(tmp_path)).write(to_batch(buf.take()))
    on_disk = pq.read_schema(path)
    for schema in (on_disk, TELEMETRY_SCHEMA, SERVER_METRICS_SCHEMA):
        ns = [f for f in schema if f.name.endswith("_ns")]
        assert ns, schema
        for f in ns:
            assert f.metadata and f.metadata[b"unit"] == b"ns", f
            assert b"clock" in f.metadata or f.metadata.get(b"kind") == b"duration", f
    assert on_disk.field("sent_ns").type == pa.int64()  # plain integers: the analysis does arithmetic on them
    assert b"epoch" in on_disk.field("end_ns").metadata[b"clock"]


def test_status_is_dictionary_encoded_on_disk_and_reads_as_the_analysis_reads_it(tmp_path):
    buf = RecordBuffer()
    for i, status in enumerate(["ok", "timeout", "ok", None, "http_error"]):
        buf.append({"request_id": f"r{i}", "level": 0, "status": status})
    PartWriter(part_dir(str(tmp_path / "records"), 0, 0)).write(to_batch(buf.take()))
    table = read_records(str(tmp_path))
    status = table.column("status")
    assert pa.types.is_dictionary(status.type)
    assert pa.types.is_dictionary(pq.read_table(next((tmp_path / "records").rglob("part-*.parquet"))).column("status").type)
    assert pa.compute.fill_null(pa.compute.equal(status, "ok"), False).to_pylist() == [True, False, True, False, False]
    counts = {c["values"]: c["counts"] for c in pa.compute.value_counts(status).to_pylist()}
    assert counts == {"ok": 2, "timeout": 1, None: 1, "http_error": 1}


def _write_old_style_part(records: Path, level: int, worker: int, statuses: list[str]) -> None:
    """A part as loadgen wrote them before: hive directories, plain-string status, no field metadata."""
    d = records / f"level={level}" / f"worker={worker}"
    d.mkdir(parents=True)
    plain = pa.schema([f.remove_metadata() if f.name != "status" else pa.field("status", pa.string()) for f in RECORD_SCHEMA])
    rows = [{"request_id": f"old-{level}-{worker}-{i}", "level": level, "worker_id": worker, "status": s}
            for i, s in enumerate(statuses)]
    pq.write_table(pa.Table.from_pylist(rows, schema=plain), d / "part-00000-old.parquet")


def test_a_run_directory_in_the_older_hive_layout_still_reads_with_loadgens_readers(tmp_path):
    records = tmp_path / "records"
    _write_old_style_part(records, 0, 0, ["ok", "ok"])
    _write_old_style_part(records, 0, 1, ["timeout"])
    _write_old_style_part(records, 1, 0, ["ok"])
    assert read_records(str(tmp_path)).num_rows == 4
    assert read_level(str(records), 0, ["request_id"]).num_rows == 3
    assert [(lv, t.num_rows) for lv, t in iter_level_tables(str(records), ["status"])] == [(0, 3), (1, 1)]
    assert worker_statuses(str(records), 0, 1) == {"timeout": 1}


def test_levels_are_found_below_the_records_root_whatever_the_root_is_called(tmp_path):
    root = tmp_path / "level-7" / "records"  # a root whose own path looks like a level directory
    for level in (0, 2):
        buf = RecordBuffer()
        buf.append({"request_id": f"r{level}", "level": level, "status": "ok"})
        PartWriter(part_dir(str(root), level, 0)).write(to_batch(buf.take()))
    assert [(lv, t.column("request_id").to_pylist()) for lv, t in iter_level_tables(str(root), ["request_id"])] == [
        (0, ["r0"]), (2, ["r2"])
    ]
    assert [lv for lv, _ in iter_level_tables(f"file://{root}/", ["request_id"])] == [0, 2]


def test_half_written_parts_of_a_killed_writer_are_removed_and_finished_ones_kept(tmp_path):
    from loadgen.rundir.parts import remove_unfinished_parts

    records = tmp_path / "records"
    records.mkdir()
    (records / ".part-level-0-worker-1-00003-abcd.parquet.tmp").write_bytes(b"PAR1 half")
    (records / "part-level-0-worker-1-00002-abcd.parquet").write_bytes(b"kept")
    assert remove_unfinished_parts(str(tmp_path)) == 1
    assert sorted(p.name for p in records.iterdir()) == ["part-level-0-worker-1-00002-abcd.parquet"]
