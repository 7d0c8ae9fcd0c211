#!/usr/bin/env bash
# ABXI's protocol on ABXI's own data (Grocery_and_Gourmet_Food -> Home_and_Kitchen, "afk"), with run's
# defaults, so that the numbers sit beside the paper's (../shared/data/food_kitchen/README.md). The release
# is already filtered (users of both domains, >= 5 interactions in each): no further k-core, every row
# kept. Leave-one-out on the merged timeline, no cold-start hold-out, both domains evaluated, full ranking
# and 999 sampled negatives. `joint`, the model of both timelines, is trained once and ranked in each
# domain; it is then retrained at two more seeds (the single-domain models stay those of the first seed).
#
#   bash examples/afk_protocol.sh                  # then: python benchmarks/afk_table.py "$XDREC_WORKSPACE"
set -euo pipefail

export XDREC_WORKSPACE=${XDREC_WORKSPACE:-./afk}
DATA=${DATA:-../shared/data/food_kitchen}
DEVICE=${DEVICE:-auto}
SEEDS=${SEEDS:-"43 44"}
OUT="$XDREC_WORKSPACE/afk-results"
mkdir -p "$OUT"

time xdrec run Grocery_and_Gourmet_Food Home_and_Kitchen --source "$DATA" \
  --split mixed --min-user 1 --min-item 1 --cold-start 0 --device "$DEVICE"
xdrec evaluate --k 10 --json > "$OUT/full-42.json"
xdrec evaluate --k 10 --negatives 999 --json > "$OUT/sampled-42.json"

for seed in $SEEDS; do
  xdrec transfer --strategy joint --seed "$seed" --device "$DEVICE"
  xdrec evaluate --k 10 --json > "$OUT/full-$seed.json"
  xdrec evaluate --k 10 --negatives 999 --json > "$OUT/sampled-$seed.json"
done
