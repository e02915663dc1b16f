"""A run directory is a dataset every tool opens as is: pandas, pyarrow, polars and DuckDB with their default calls.

The run is written by loadgen's own writers (``RecordBuffer`` → ``to_batch`` →
``PartWriter`` at ``layout.record_parts``, telemetry at ``layout.telemetry_parts``,
server metrics as the scraper writes them), several parts per (level, worker). Each
tool must see every row, exactly the schema's columns (no partition key added
or duplicated), and the same numbers. The two examples in
docs/run-directory.md are run as written, against this run.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from loadgen.rundir import (
    RECORD_SCHEMA,
    SERVER_METRICS_SCHEMA,
    TELEMETRY_SCHEMA,
    PartWriter,
    RecordBuffer,
    read_records,
    record_parts,
    records_root,
    telemetry_parts,
    to_batch,
)
from loadgen.rundir.layout import SERVER_METRICS, run_file
from loadgen.rundir.parts import write_table_atomically

pd = pytest.importorskip("pandas")
pl = pytest.importorskip("polars")
duckdb = pytest.importorskip("duckdb")

DOC = Path(__file__).resolve().parents[1] / "docs" / "run-directory.md"
T0 = 1_764_000_000_000_000_000  # 2025-11-24, epoch ns: the run clock is epoch-based
MS = 1_000_000
LEVELS, WORKERS, PER_PART, PARTS = (0, 1), (0, 1), 3, 2


def _record(level: int, worker: int, i: int) -> dict[str, Any]:
    """One request: TTFT (11 + 10·level + i + worker) ms; worker 1's first request of each part times out."""
    sent = T0 + level * 100_000 * MS + (worker * 100 + i) * 10 * MS
    ok = not (worker == 1 and i % PER_PART == 0)
    first = sent + (11 + 10 * level + i + worker) * MS
    return {
        "run_id": "tools", "level": level, "level_value": 4.0 * (level + 1), "worker_id": worker,
        "request_id": f"L{level}-w{worker}-{i}", "scheduled_ns": sent - 1000, "sent_ns": sent,
        "first_token_ns": first if ok else None, "end_ns": (first + 30 * MS) if ok else sent + 500 * MS,
        "output_tokens": 4 if ok else None, "chunk_ns": [first + k * 10 * MS for k in range(4)] if ok else [],
        "status": "ok" if ok else "timeout", "error": None if ok else "read timeout",
    }


def make_run(run_dir: Path) -> list[dict[str, Any]]:
    """Write a small run (records, telemetry, server metrics) as loadgen writes one; return the records."""
    rows = []
    for level in LEVELS:
        for worker in WORKERS:
            writer = PartWriter(record_parts(records_root(str(run_dir)), level, worker))
            for part in range(PARTS):  # several flushes: several parts per directory
                buf = RecordBuffer()
                for i in range(part * PER_PART, (part + 1) * PER_PART):
                    rows.append(_record(level, worker, i))
                    buf.append(rows[-1])
                writer.write(to_batch(buf.take()))
    for worker in WORKERS:
        tel = [{"t_ns": T0 + s * 250 * MS, "level": s % 2, "worker_id": worker, "loop_lag_ms": 0.5, "cpu_percent": 10.0,
                "in_flight": s, "sent": s, "completed": s} for s in range(4)]
        PartWriter(telemetry_parts(str(run_dir), worker)).write(pa.Table.from_pylist(tel, schema=TELEMETRY_SCHEMA))
    server = [{"t_ns": T0 + s * MS, "level": 0, "name": "running", "metric": "vllm:num_requests_running",
               "labels": "{}", "value": float(s)} for s in range(5)]
    write_table_atomically(pa.Table.from_pylist(server, schema=SERVER_METRICS_SCHEMA), run_file(str(run_dir), SERVER_METRICS))
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, make_run(run_dir)


def _frame(obj: Any) -> tuple[int, list[str]]:
    """(rows, column names) of whatever a tool returned: a pandas/polars frame or an Arrow table."""
    if isinstance(obj, pa.Table):
        return obj.num_rows, obj.column_names
    return len(obj), [str(c) for c in obj.columns]


def _duckdb(path: str) -> Any:
    """DuckDB's default call: the file, or every Parquet file in the directory."""
    return duckdb.sql(f"SELECT * FROM '{path}'" if path.endswith(".parquet") else f"SELECT * FROM '{path}/*.parquet'").df()


READERS: dict[str, Callable[[str], Any]] = {
    "pandas.read_parquet": pd.read_parquet,
    "pyarrow.parquet.read_table": pq.read_table,
    "pyarrow.dataset hive": lambda p: ds.dataset(p, format="parquet", partitioning="hive").to_table(),
    "pyarrow.dataset": lambda p: ds.dataset(p, format="parquet").to_table(),
    "polars.read_parquet": pl.read_parquet,
    "duckdb": _duckdb,
}
TABLES = {
    "records": (lambda run_dir: records_root(str(run_dir)), RECORD_SCHEMA, len(LEVELS) * len(WORKERS) * PARTS * PER_PART),
    "telemetry": (lambda run_dir: telemetry_parts(str(run_dir), 0).dir, TELEMETRY_SCHEMA, 4 * len(WORKERS)),
    "server_metrics": (lambda run_dir: run_file(str(run_dir), SERVER_METRICS), SERVER_METRICS_SCHEMA, 5),
}


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_tool_opens_each_table_with_its_default_call(run, reader, table):
    run_dir, _ = run
    where, schema, rows = TABLES[table]
    n, columns = _frame(READERS[reader](where(run_dir)))
    assert n == rows
    assert sorted(columns) == sorted(schema.names)  # nothing added (no partition key), nothing twice


def test_the_tools_agree_on_types_values_and_status(run):
    run_dir, rows = run
    root = records_root(str(run_dir))
    frame = pd.read_parquet(root)
    assert str(frame.level.dtype) == "int32" and str(frame.sent_ns.dtype) == "int64"
    assert isinstance(frame.status.dtype, pd.CategoricalDtype)  # dictionary-encoded on disk
    # A time column with nulls: exact int64 with the nullable backend (the default would make it float64).
    exact = pd.read_parquet(root, dtype_backend="numpy_nullable")
    assert sorted(exact.first_token_ns.dropna().astype("int64")) == sorted(r["first_token_ns"] for r in rows if r["first_token_ns"])
    lazy = pl.scan_parquet(root).filter(pl.col("status") == "ok").collect()
    assert lazy.schema["level"] == pl.Int32 and lazy.height == sum(r["status"] == "ok" for r in rows)
    [(ok,)] = duckdb.sql(f"SELECT count(*) FROM '{root}/*.parquet' WHERE status = 'ok' AND level = 1").fetchall()
    assert ok == sum(r["status"] == "ok" and r["level"] == 1 for r in rows)
    # One level by file name, as docs/run-directory.md shows it.
    [(n, levels)] = duckdb.sql(f"SELECT count(*), list(DISTINCT level) FROM '{root}/part-level-1-*.parquet'").fetchall()
    assert (n, levels) == (sum(r["level"] == 1 for r in rows), [1])
    assert sorted(pq.read_table(root).column("request_id").to_pylist()) == sorted(r["request_id"] for r in rows)
    assert read_records(str(run_dir)).num_rows == len(rows)  # and loadgen's own reader, on the same directory


# ----------------------------------------------------------------------------- the documented examples


def doc_example(language: str) -> str:
    """The fenced ``language`` block docs/run-directory.md marks as run by this test (exactly one)."""
    found = re.findall(rf"<!-- run by tests/test_dataset_tools.py -->\s*```{language}\n(.*?)```", DOC.read_text(), re.S)
    assert len(found) == 1, f"expected one marked {language} example in {DOC}, found {len(found)}"
    return found[0]


def expected_per_level(rows: list[dict[str, Any]]) -> dict[int, tuple[int, int, float]]:
    """level → (requests, ok, median TTFT ms of the ok ones), computed from the records written."""
    out = {}
    for level in LEVELS:
        mine = [r for r in rows if r["level"] == level]
        ttft = [(r["first_token_ns"] - r["sent_ns"]) / MS for r in mine if r["status"] == "ok"]
        out[level] = (len(mine), len(ttft), round(statistics.median(ttft), 6))
    return out


def test_the_documented_pandas_example_runs_and_gives_the_numbers(run, capsys):
    run_dir, rows = run
    code = doc_example("python").replace('"RUN/', f'"{run_dir}/')
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the documented example, as written
    per_level = namespace["per_level"]
    got = {int(lv): (int(r.requests), int(r.ok), round(float(r.ttft_p50_ms), 6)) for lv, r in per_level.iterrows()}
    assert got == expected_per_level(rows)
    assert str(namespace["sent_at"].dt.tz) == "UTC" and namespace["sent_at"].min().year == 2025
    assert "ttft_p50_ms" in capsys.readouterr().out


def test_the_documented_duckdb_example_runs_and_gives_the_numbers(run):
    run_dir, rows = run
    sql = doc_example("sql").replace("'RUN/", f"'{run_dir}/")
    result = duckdb.sql(sql).fetchall()
    got = {int(r[0]): (int(r[1]), int(r[2]), round(float(r[3]), 6)) for r in result}
    assert got == expected_per_level(rows)
    assert all(r[4].year == 2025 for r in result)  # first_sent: the epoch-ns column as a timestamp


# ----------------------------------------------------------------------------- a real run, written by the workers


@pytest.mark.slow
def test_a_real_run_opens_in_every_tool_and_counts_what_its_ledger_says(tmp_path):
    import io

    from rich.console import Console

    from loadgen.config import ClusterConfig, LengthDist, LoadConfig, LoadgenConfig, SimProfile, SLOConfig, TargetConfig, WorkloadConfig
    from loadgen.runner import run as run_loadgen

    config = LoadgenConfig(
        target=TargetConfig(kind="sim", sim=SimProfile(name="small", max_num_seqs=16, step_base_ms=5, step_per_seq_ms=0.2)),
        workload=WorkloadConfig(num_requests=200, input_tokens=LengthDist(mean=16), output_tokens=LengthDist(mean=8)),
        load=LoadConfig(kind="rate", levels=[10, 20], duration_s=2, warmup_s=0.5, drain_s=5, seed=0),
        cluster=ClusterConfig(num_cpus=2, workers=2),
        slo=SLOConfig(ttft_ms=None, tpot_ms=None),
        progress=False,
    )
    run_dir = tmp_path / "run"
    meta = run_loadgen(config, str(run_dir), console=Console(file=io.StringIO()))
    sent = {lv.level: lv.ledger.sent for lv in meta.levels}
    assert sum(sent.values()) > 0
    for table, (where, schema, _) in TABLES.items():
        for reader, read in READERS.items():
            n, columns = _frame(read(where(run_dir)))
            assert sorted(columns) == sorted(schema.names), (table, reader)
            if table == "records":
                assert n == sum(sent.values()), reader
            else:
                assert n > 0, (table, reader)
    sql = doc_example("sql").replace("'RUN/", f"'{run_dir}/")
    assert {int(r[0]): int(r[1]) for r in duckdb.sql(sql).fetchall()} == sent


@pytest.mark.slow
def test_spark_opens_each_table_with_its_default_call(run):
    """Spark is not a test extra (a JVM and ~300 MB, minutes to start on 2 cores): opt in with LOADGEN_TEST_SPARK=1."""
    import os
    import shutil

    if os.environ.get("LOADGEN_TEST_SPARK") != "1":
        pytest.skip("Spark is opt-in (LOADGEN_TEST_SPARK=1, with pyspark and java installed): it takes minutes")
    pyspark_sql = pytest.importorskip("pyspark.sql")
    if shutil.which("java") is None:
        pytest.skip("pyspark needs a Java runtime (java not on PATH)")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # Spark's driver listens on loopback only
    spark = (
        pyspark_sql.SparkSession.builder.master("local[1]")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    try:
        run_dir, _ = run
        for table, (where, schema, rows) in TABLES.items():
            frame = spark.read.parquet(where(run_dir))
            assert (frame.count(), sorted(frame.columns)) == (rows, sorted(schema.names)), table
    finally:
        spark.stop()
