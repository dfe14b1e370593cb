#!/usr/bin/env bash
# The acceptance check of sharded sweeps without a batch engine: a matrix run locally and as
# four shard processes started at once must merge to the same bytes.
#   scripts/sweep-shards-check.sh [COCOMEM] [MATRIX]
set -euo pipefail
cocomem=${1:-.build/release/cocomem}
matrix=${2:-examples/sweeps/directmap.yaml}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$cocomem" sweep "$matrix" --out "$dir/local.jsonl" --quiet
for i in 0 1 2 3; do
  "$cocomem" sweep "$matrix" --shard "$i/4" --jobs 1 --out "$dir/shard$i.jsonl" --quiet &
done
wait
"$cocomem" merge "$dir/local.jsonl" > "$dir/local.txt"
"$cocomem" merge "$dir"/shard*.jsonl > "$dir/shards.txt"
"$cocomem" merge "$dir/local.jsonl" --csv > "$dir/local.csv"
"$cocomem" merge "$dir"/shard*.jsonl --csv > "$dir/shards.csv"
cmp "$dir/local.txt" "$dir/shards.txt"
cmp "$dir/local.csv" "$dir/shards.csv"
echo "sweep shards: $(($(wc -l < "$dir/local.jsonl"))) runs, four shards merge to the local table byte for byte"
