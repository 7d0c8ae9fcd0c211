"""Run by tests/test_distributed.py under `torchrun --nproc-per-node 2`: train the same tiny SASRec on
every loss with DistributedDataParallel (gloo, CPU) and let rank 0 write the weights, the training
results and the sharded validation metric to OUT (argv[1])."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import save_file

from xdrec.evaluation import per_user_metrics
from xdrec.models.sasrec import SASRec, SASRecConfig
from xdrec.sequence_scorer import SequenceScorer
from xdrec.training import Examples, TrainConfig, train
from xdrec.validation import validation_metric

N_ITEMS, MAX_LEN, N_EXAMPLES, BATCH = 40, 8, 49, 8  # 49: the last global batch leaves rank 1 empty


def examples() -> Examples:
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(1, N_ITEMS + 1, (N_EXAMPLES, MAX_LEN + 1), generator=g)
    lengths = torch.randint(2, MAX_LEN + 2, (N_EXAMPLES,), generator=g)
    seqs[torch.arange(MAX_LEN + 1) < (MAX_LEN + 1 - lengths)[:, None]] = 0
    inputs, labels = seqs[:, :-1].clone(), seqs[:, 1:].clone()
    labels[inputs == 0] = 0
    return Examples(inputs, labels)


def cases() -> pl.DataFrame:
    """31 validation users (an odd count: the two shards differ in size)."""
    g = torch.Generator().manual_seed(1)
    items = torch.randint(1, N_ITEMS + 1, (31, 6), generator=g).tolist()
    return pl.DataFrame(
        {
            "user_id": list(range(31)),
            "history": [row[: 1 + i % 5] for i, row in enumerate(items)],
            "targets": [row[5:] for row in items],
            "segment": ["warm"] * 31,
        },
        schema={
            "user_id": pl.Int64,
            "history": pl.List(pl.Int64),
            "targets": pl.List(pl.Int64),
            "segment": pl.String,
        },
    )


def run(loss: str, batch_size: int, out: Path | None) -> tuple[SASRec, dict]:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(N_ITEMS, hidden=16, blocks=1, heads=2, max_len=MAX_LEN, dropout=0.0))
    validate = validation_metric(cases(), N_ITEMS, lambda m: SequenceScorer(m))
    config = TrainConfig(
        epochs=3,
        batch_size=batch_size,
        lr=3e-3,
        loss=loss,
        negatives=8,
        device="cpu",
        threads=1,
        patience=10,
        in_batch=False,  # in-batch negatives are each process's own labels: not one process's global batch
    )
    result = train(model, examples(), config, validate=validate, out_dir=out, progress=False)
    keep = ("loss", "world_size", "steps", "epochs_run", "best_metric", "history")
    return model, {k: getattr(result, k) for k in keep}


def interrupted(out: Path, epochs: int, resume: bool) -> SASRec:
    """bce with dropout: each rank draws its own negatives and masks, which a resume must restore."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(N_ITEMS, hidden=16, blocks=1, heads=2, max_len=MAX_LEN, dropout=0.3))
    config = TrainConfig(epochs=epochs, batch_size=BATCH, loss="bce", device="cpu", threads=1)
    train(model, examples(), config, out_dir=out, resume=resume, progress=False)
    return model


def ranked(negatives: int | None) -> pl.DataFrame:
    """Every validation case ranked by a fixed (untrained) model; sharded under torchrun."""
    torch.manual_seed(5)
    model = SASRec(SASRecConfig(N_ITEMS, hidden=16, blocks=1, heads=2, max_len=MAX_LEN, dropout=0.0))
    scorer = SequenceScorer(model)
    return per_user_metrics(
        scorer, cases(), N_ITEMS, ks=(5, 10), negatives=negatives, batch_size=4, sharded=True
    )


def main() -> None:
    import torch.distributed as dist

    from xdrec.distributed import exit_process

    out = Path(sys.argv[1])
    results = {}
    models = {}
    for loss in ("ce", "sampled"):
        models[loss], results[loss] = run(loss, BATCH, out / f"run-{loss}")
    models["whole"] = interrupted(out / "whole", 3, resume=False)
    interrupted(out / "split", 2, resume=False)
    torch.manual_seed(123)  # whatever the global RNG holds now must not matter
    models["resumed"] = interrupted(out / "split", 3, resume=True)
    results["ranked"] = {str(n): ranked(n).to_dicts() for n in (None, 6)}  # full, sampled-6
    if dist.get_rank() == 0:
        for name, model in models.items():
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(out / f"{name}.safetensors"))
        (out / "results.json").write_text(json.dumps(results))
    exit_process(0, clean=True)


if __name__ == "__main__":
    main()
