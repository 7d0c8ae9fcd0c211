#!/usr/bin/env bash
# ABXI's protocol on ABXI's own data (Grocery_and_Gourmet_Food -> Home_and_Kitchen, "afk"), so that the
# numbers sit beside the paper's (../shared/data/food_kitchen/README.md). The release is already filtered
# (users of both domains, >= 5 interactions in each): no further k-core, every row kept. Leave-one-out on
# the merged timeline, no cold-start hold-out, every strategy trained in both directions (--reverse), both
# domains evaluated, full ranking and 999 negatives.
#
#   bash examples/afk_protocol.sh               # EPOCHS=10 by default (CPU); raise it on a GPU
set -euo pipefail

export XDREC_WORKSPACE=${XDREC_WORKSPACE:-./afk}
DATA=${DATA:-../shared/data/food_kitchen}
EPOCHS=${EPOCHS:-10}
DEVICE=${DEVICE:-auto}

xdrec run Grocery_and_Gourmet_Food Home_and_Kitchen --source "$DATA" \
  --split mixed --min-user 1 --min-item 1 --cold-start 0 \
  --reverse --epochs "$EPOCHS" --patience 3 --k 10 --k 5 --negatives 999 --device "$DEVICE"
