#!/usr/bin/env bash
# Books -> Movies_and_TV (or any two domains), one stage at a time, as a user would chain the commands.
# Every stage reads the previous one's output from the workspace, so no paths are typed.
# Books is ~29.5M reviews: fetch downloads a few GB once (cached, resumable); prepare needs ~10 GiB.
#
#   bash examples/books_to_movies.sh            # the real thing (needs the Hugging Face hub)
#   SOURCE=path/to/files bash examples/...      # the same from local <Domain>.jsonl.gz files
#
# Other domains and a shorter run (each variable optional):
#   SOURCE_DOMAIN=Grocery_and_Gourmet_Food TARGET_DOMAIN=Home_and_Kitchen SOURCE=/path/to/food_kitchen \
#   EPOCHS=3 XDREC_WORKSPACE=./food-kitchen bash examples/books_to_movies.sh
set -euo pipefail

SOURCE_DOMAIN=${SOURCE_DOMAIN:-Books}
TARGET_DOMAIN=${TARGET_DOMAIN:-Movies_and_TV}
EPOCHS=${EPOCHS:-50}              # maximum epochs per model (early stopping usually ends sooner)
NEGATIVES=${NEGATIVES:-999}       # the papers' sampled protocol: fewer than the target's items
DEVICE=${DEVICE:-auto}
export XDREC_WORKSPACE=${XDREC_WORKSPACE:-./books-movies}
train=(--device "$DEVICE" --epochs "$EPOCHS")

xdrec fetch "$SOURCE_DOMAIN" "$TARGET_DOMAIN" ${SOURCE:+--source "$SOURCE"}
xdrec prepare "$SOURCE_DOMAIN" "$TARGET_DOMAIN" --min-user 5 --min-item 5 --split loo --cold-start 0.2 --seed 42
xdrec overlap

xdrec pretrain "${train[@]}"                                # source-only SASRec
xdrec pretrain --domain "$TARGET_DOMAIN" "${train[@]}"      # target-only baseline
xdrec embed --device "$DEVICE"                              # source user vectors
xdrec transfer --strategy all "${train[@]}"                 # mapping, finetune, fusion, joint

xdrec evaluate --k 10 --k 20                                # full ranking, per segment
xdrec evaluate --k 10 --negatives "$NEGATIVES" --json > "$XDREC_WORKSPACE/sampled.json"  # labelled SAMPLED

# Recommend for the first cold-start user of the evaluation.
user=$(python -c "import polars as pl, sys; print(pl.read_parquet(sys.argv[1]).filter('cold')['user'][0])" \
  "$XDREC_WORKSPACE/datasets/$SOURCE_DOMAIN+$TARGET_DOMAIN/users.parquet")
xdrec recommend "$user" --k 10
