"""Top-10 ranking baselines on our MovieLens-100K split: most-popular, and implicit-feedback
matrix factorisation from the ``implicit`` library (ALS and BPR).

  pip install -e '.[experiments]'
  python experiments/baselines_ranking.py [--seeds 0 1 2] [--out FILE]

Every baseline is fitted on the train + validation interactions of
``mtl_jax.data.movielens.temporal_split`` (a binary user x item matrix: every rating is an
interaction) and scored through our own ranking evaluation (``mtl_jax.ranking``): every movie
the user has not rated in train or validation is a candidate, relevant = the user's test
movies rated >= 4, top 10, MMR lambda 1. Also fitted on train alone, the interactions our
models' explicit tasks see, to show what the validation interactions are worth. ALS: 64
factors, regularisation 0.05, 20 iterations; BPR: implicit's defaults (100 factors, learning
rate 0.01, regularisation 0.01, 100 iterations). Writes
experiments/results/ranking_baselines.json and prints one line per fit.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns and slows down otherwise

import numpy as np  # noqa: E402

from mtl_jax import configlib, ranking, reporting  # noqa: E402
from mtl_jax.data import load_dataset  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parent.parent
METRICS = ("ndcg@10", "hr@10", "recall@10", "coverage@10", "long_tail_share")


def _interactions(dataset, splits: tuple[str, ...]):
    import scipy.sparse as sp

    users = np.concatenate([dataset.split(s).features["user_id"] for s in splits])
    items = np.concatenate([dataset.split(s).features["item_id"] for s in splits])
    shape = (dataset.features[0].vocab_size, dataset.features[1].vocab_size)
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=shape)
    matrix.data[:] = 1.0  # a pair rated twice is one interaction
    return matrix


def _count_scorer(counts: np.ndarray):
    return lambda split: {"like": counts[split.features["item_id"]].astype(np.float64)}


def _factor_scorer(model):
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)

    def predict(split):
        u, i = split.features["user_id"], split.features["item_id"]
        return {"like": np.einsum("nd,nd->n", users[u], items[i])}

    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="", help="MovieLens files placed by hand")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--out", type=pathlib.Path, default=_ROOT / "experiments/results/ranking_baselines.json"
    )
    args = parser.parse_args()
    try:
        import implicit
    except ImportError as e:
        raise SystemExit(f"needs implicit: pip install -e '.[experiments]' ({e})") from e

    config = configlib.load_config_file(str(_ROOT / "configs" / "movielens.py"))
    config.data.data_dir = args.data_dir
    dataset = load_dataset(config.data, config.seed)
    c = config.ranking
    c.mmr_lambdas = (1.0,)
    c.fusion, c.fusion_mode = {"like": 1.0}, "sum"  # each scorer fills "like" with its score

    rows = []

    def record(model: str, fit_on: tuple[str, ...], seed, predict, fit_s: float) -> None:
        result = ranking.evaluate_ranking(predict, dataset, c)["mmr_lambda=1"]
        row = {"model": model, "fit_on": "+".join(fit_on), "seed": seed, "fit_s": fit_s}
        row.update({m: float(result[m]) for m in METRICS})
        rows.append(row)
        print(json.dumps(row), flush=True)

    for fit_on in (("train", "validation"), ("train",)):
        matrix = _interactions(dataset, fit_on)
        counts = np.asarray(matrix.sum(0)).ravel()
        record("popularity", fit_on, None, _count_scorer(counts), 0.0)
        for seed in args.seeds:
            models = {
                "als": implicit.cpu.als.AlternatingLeastSquares(
                    factors=64, regularization=0.05, iterations=20, random_state=seed
                ),
                "bpr": implicit.cpu.bpr.BayesianPersonalizedRanking(random_state=seed),
            }
            for name, model in models.items():
                start = time.perf_counter()
                model.fit(matrix, show_progress=False)
                record(name, fit_on, seed, _factor_scorer(model), time.perf_counter() - start)

    summary = {}
    for key in sorted({(r["model"], r["fit_on"]) for r in rows}):
        values = [r for r in rows if (r["model"], r["fit_on"]) == key]
        summary["/".join(key)] = {
            m: [float(np.mean([r[m] for r in values])), float(np.std([r[m] for r in values]))]
            for m in METRICS
        }
    out = {
        "commit": reporting.git_commit(),
        "implicit": implicit.__version__,
        "setup": {"relevant": "test ratings >= 4", "candidates": "unseen in train+validation"},
        "rows": rows,
        "mean_std": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    reporting.write_json(args.out, out)
    for key, value in summary.items():
        print(f"{key:<28} " + " ".join(f"{m} {v[0]:.4f}+-{v[1]:.4f}" for m, v in value.items()))


if __name__ == "__main__":
    main()
