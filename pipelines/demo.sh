#!/usr/bin/env bash
# What `make demo` runs: the main pipeline on sample_data/ with offline defaults.
# Each stage section is filled in by its issue; `prefcli run pipelines/default.toml` replaces this later.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PREFCLI_CACHE_DIR="${PREFCLI_CACHE_DIR:-$PWD/demo_out/cache}"
OUT=demo_out
mkdir -p "$OUT"

# --- section:ingest
# Every sample format in one call (auto-detected per file); the custom nested file needs --map first.
prefcli ingest sample_data/nested_custom.json \
  --map prompt=conversation_input,chosen=chosen.answer,rejected=reject.answer -o "$OUT/mapped.parquet" --quiet
prefcli ingest sample_data/hh_rlhf.jsonl.gz sample_data/trl_standard.jsonl sample_data/trl_conversational.jsonl \
  sample_data/pairwise.csv sample_data/pairwise_signed.json sample_data/votes.json \
  sample_data/multi_response.jsonl sample_data/oasst_trees.jsonl "$OUT/mapped.parquet" \
  -o "$OUT/pairs.parquet"
prefcli stats "$OUT/pairs.parquet"
# --- /section:ingest

# --- section:dedup
# Flag exact and near-duplicate prompts and eval-set contamination (every row kept, flagged: multi-response
# data shares prompts on purpose), then drop repeated whole pairs with the removed rows set aside.
prefcli dedup "$OUT/pairs.parquet" -o "$OUT/dedup.parquet" --against sample_data/eval_prompts.txt
prefcli dedup "$OUT/pairs.parquet" -o "$OUT/dedup_pairs.parquet" --on pair --drop \
  --removed "$OUT/dedup_removed.parquet" --against sample_data/eval_prompts.txt
# Another threshold re-clusters from the stored neighbour graph (no embedding); --explain shows the choice.
prefcli dedup "$OUT/pairs.parquet" --threshold 0.85 --explain
# --- /section:dedup

# --- section:vote
# The offline ensemble (cross-fitted Bradley-Terry members on MiniLM and TF-IDF views) votes on every pair;
# likely-wrong labels land in pref_bucket=incorrect. A second run drops them into a side file instead.
VOTE_IN="$OUT/dedup.parquet"; [ -f "$VOTE_IN" ] || VOTE_IN="$OUT/pairs.parquet"
prefcli vote "$VOTE_IN" -o "$OUT/vote.parquet" --rm ensemble --seed 0
prefcli vote "$VOTE_IN" -o "$OUT/vote_dropped.parquet" --rm ensemble --action drop \
  --set-aside "$OUT/vote_incorrect.parquet" --seed 0 --quiet
# --- /section:vote

# --- section:mine
# Hard negatives, guarded against false negatives: added as new pairs (same prompt + 3 nearest prompts),
# and, separately, swapped in for the rejected of `strong` (easy) pairs (originals go to the rejects file).
prefcli mine "$OUT/vote.parquet" -o "$OUT/mined.parquet" --strategy both --neighbors 3 --seed 0
prefcli mine "$OUT/vote.parquet" -o "$OUT/mined_replace.parquet" --mode replace-easy --seed 0
# --- /section:mine

# --- section:length-bias
prefcli length-bias fit "$OUT/vote.parquet" -o "$OUT/length_model.json"
prefcli length-bias apply "$OUT/vote.parquet" --model "$OUT/length_model.json" -o "$OUT/length.parquet"
prefcli length-bias report "$OUT/length.parquet" --model "$OUT/length_model.json" --png "$OUT/length_bias.png"
# --- /section:length-bias

# --- section:review
# A review queue for humans (Label Studio and Argilla tasks, randomised sides), and a TRL training file.
prefcli review select "$OUT/vote.parquet" -o "$OUT/review_queue.parquet" --budget 20 --seed 0
prefcli review export "$OUT/review_queue.parquet" --to label-studio -o "$OUT/review_label_studio"
prefcli review export "$OUT/review_queue.parquet" --to argilla -o "$OUT/review_argilla"
prefcli export "$OUT/vote.parquet" --to trl -o "$OUT/train.trl.jsonl" --where "pref_bucket != 'incorrect'"
# --- /section:review
