"""Full `prefcli run` against a cron refresh that adds 1% new raw rows (AlpacaEval judgments, real data).

    .venv/bin/python benchmarks/refresh.py [--lines 21000] [--new-share 0.01] [--on prompt|pair] [--dedup-pairs] [--with-vote]

Cold full run on the base file (fresh workdir, fresh cache under it), then a new file with 1% more
lines is dropped in and the same workdir is refreshed. Prints both wall times and their ratio, the
per-stage times, how many raw files ingest parsed / replayed from its cache, the load average (the
box is shared: note it with the figures), and checks the refreshed output against a from-scratch run
on base + new (bytes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from run_common import ALPACA, run_pipeline, stage_seconds, write_raw

PIPELINE = """
[pipeline]
name = "refresh-bench"
seed = 0

[[stage]]
command = "ingest"
inputs = ["raw"]

[[stage]]
command = "dedup"
on = "{on}"
{pairs}{vote}
[[stage]]
command = "export"
to = "trl"
keep = "pair_id,source"
output = "train.jsonl"
"""
PAIRS = """
[[stage]]
name = "dedup-pairs"
command = "dedup"
on = "pair"
drop = true
"""
VOTE = """
[[stage]]
command = "vote"
rm = ["ensemble"]
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=21000, help="raw AlpacaEval judgments in the base file")
    parser.add_argument("--new-share", type=float, default=0.01)
    parser.add_argument("--on", default="prompt", help="dedup text: prompt (805 distinct instructions) or pair")
    parser.add_argument("--dedup-pairs", action="store_true",
                        help="add pair-level dedup with --drop after the prompt-level one, as pipelines/default.toml does")
    parser.add_argument("--with-vote", action="store_true", help="add the offline ensemble vote stage")
    parser.add_argument("--no-verify", action="store_true", help="skip the from-scratch run on base + new")
    args = parser.parse_args()
    new_lines = max(1, round(args.lines * args.new_share))
    with tempfile.TemporaryDirectory(prefix="prefcli-refresh-") as scratch:
        root = Path(scratch)
        write_raw(ALPACA, root / "raw" / "base.jsonl", 0, args.lines)
        toml = root / "pipeline.toml"
        toml.write_text(PIPELINE.format(on=args.on, pairs=PAIRS if args.dedup_pairs else "",
                                        vote=VOTE if args.with_vote else ""))

        print(f"load average before: {load()}")
        full_s, full = run_pipeline(toml, root / "work")
        rows = next(r["rows_out"] for r in full["tables"]["stages"] if r["stage"] == "ingest")
        print(f"full run: {full_s:.1f}s on {args.lines} raw lines -> {rows} pairs ({stage_seconds(full)}); "
              f"load {load()}")

        write_raw(ALPACA, root / "raw" / "new.jsonl", args.lines, new_lines)
        refresh_s, refreshed = run_pipeline(toml, root / "work")
        ingest = next(r for r in refreshed["tables"]["stages"] if r["stage"] == "ingest")
        print(f"refresh: {refresh_s:.1f}s after adding {new_lines} raw lines ({stage_seconds(refreshed)}; "
              f"ingest {ingest['highlights'] or 'skipped'}); load {load()}")
        print(f"refresh / full = {refresh_s / full_s:.3f}  (goal <= 0.05)")

        if not args.no_verify:
            scratch_s, _ = run_pipeline(toml, root / "fresh")
            same = (root / "work" / "export" / "train.jsonl").read_bytes() == \
                (root / "fresh" / "export" / "train.jsonl").read_bytes()
            print(f"from-scratch run on base + new: {scratch_s:.1f}s; refreshed output byte-identical: {same}")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
