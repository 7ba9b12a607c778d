"""The one door to disk: every read and write of Parquet, JSON, JSONL, CSV and datasets goes here.

- `atomic`: writes are atomic (temp beside the target, fsync, rename); `-` writes stdout.
- `parquet`: Parquet tables in and out, streamed or whole, validated against the pair schema.
- `raw`: the raw sources ingest reads, as batches of records with their line numbers.
- `workdir`: digests, listings, kill recovery and the lock of a `prefcli run` workdir.

Every failure to read becomes a one-line InputError naming the file (and line, where known).
The public names of the modules are re-exported here: `from prefcli import io; io.read_pairs(...)`.
"""

from .atomic import (STDIO, atomic_path, json_default, jsonl_lines, read_json, remove_path, write_bytes, write_json,
                     write_jsonl, write_text, writing)
from .parquet import (BATCH_ROWS, ROW_GROUP_BYTES, ROW_GROUP_ROWS, ParquetSink, dataset_parts, iter_pair_batches,
                      iter_row_groups, parquet_columns, parquet_file, parquet_rows, read_pairs, read_table, take_rows,
                      write_table, write_tables)
from .raw import (COLUMNAR_MAX_BRACKETS, RAW_SUFFIXES, ColumnarBatch, RawBatch, expand_sources, iter_raw,
                  loads_checked, parse_hf_spec, read_ahead, read_records, read_text_list, records_from_document,
                  source_name)
from .workdir import OUTPUT_MARKER, exclusive_lock, file_digest, list_files, recover_interrupted

__all__ = [
    "STDIO", "atomic_path", "json_default", "jsonl_lines", "read_json", "remove_path", "write_bytes", "write_json",
    "write_jsonl", "write_text", "writing",
    "BATCH_ROWS", "ROW_GROUP_BYTES", "ROW_GROUP_ROWS", "ParquetSink", "dataset_parts", "iter_pair_batches",
    "iter_row_groups", "parquet_columns", "parquet_file", "parquet_rows", "read_pairs", "read_table", "take_rows",
    "write_table", "write_tables",
    "COLUMNAR_MAX_BRACKETS", "RAW_SUFFIXES", "ColumnarBatch", "RawBatch", "expand_sources", "iter_raw",
    "loads_checked", "parse_hf_spec", "read_ahead", "read_records", "read_text_list", "records_from_document",
    "source_name",
    "OUTPUT_MARKER", "exclusive_lock", "file_digest", "list_files", "recover_interrupted",
]
