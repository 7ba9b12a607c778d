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
# --- /section:ingest

# --- section:dedup
# --- /section:dedup

# --- section:vote
# --- /section:vote

# --- section:mine
# --- /section:mine

# --- section:length-bias
# --- /section:length-bias

# --- section:review
# --- /section:review
