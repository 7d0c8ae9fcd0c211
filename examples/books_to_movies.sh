#!/usr/bin/env bash
# Books -> Movies_and_TV, one stage at a time, as a user would chain the commands.
# Every stage reads the previous one's output from the workspace, so no paths are typed.
# Books is ~29.5M reviews: fetch downloads a few GB once (cached, resumable); prepare needs ~10 GiB.
#
#   bash examples/books_to_movies.sh            # the real thing (needs the Hugging Face hub)
#   SOURCE=path/to/files bash examples/...      # the same from local <Domain>.jsonl.gz files
set -euo pipefail

export XDREC_WORKSPACE=${XDREC_WORKSPACE:-./books-movies}
DEVICE=${DEVICE:-auto}

xdrec fetch Books Movies_and_TV ${SOURCE:+--source "$SOURCE"}
xdrec prepare Books Movies_and_TV --min-user 5 --min-item 5 --split loo --cold-start 0.2 --seed 42
xdrec overlap

xdrec pretrain --device "$DEVICE"                           # source-only SASRec (Books)
xdrec pretrain --domain Movies_and_TV --device "$DEVICE"    # target-only baseline
xdrec embed --device "$DEVICE"                              # Books user vectors
xdrec transfer --strategy all --device "$DEVICE"            # mapping, finetune, fusion, joint

xdrec evaluate --k 10 --k 20                                # full ranking, per segment
xdrec evaluate --k 10 --negatives 999 --json > sampled.json # the papers' sampled protocol, labelled

# Recommend for the first cold-start user of the evaluation.
user=$(python -c "import polars as pl, sys; d=sys.argv[1]; print(pl.read_parquet(d+'/users.parquet').filter('cold')['user'][0])" \
  "$XDREC_WORKSPACE/datasets/Books+Movies_and_TV")
xdrec recommend "$user" --k 10
