"""Classic rating-prediction baselines on our MovieLens-100K split, with scikit-surprise.

  pip install -e '.[experiments]'
  python experiments/baselines_movielens.py

Fits global mean, baseline-only biases, SVD and SVD++ (surprise's default parameters) on
train + validation of ``mtl_jax.data.movielens.temporal_split`` (the per-user temporal
split our models use; they train on train and select on validation) and reports test RMSE
and MAE, so the bar our models must clear is measured here rather than quoted. Also ranks
by train popularity and at random through our ranking evaluation. Prints a table and
writes experiments/results/movielens_baselines.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from mtl_jax import reporting
from mtl_jax.data import movielens

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _surprise_models(seed: int) -> dict:
    from surprise import SVD, BaselineOnly, SVDpp

    return {
        "baseline_only": BaselineOnly(verbose=False),
        "svd": SVD(random_state=seed),
        "svdpp": SVDpp(random_state=seed),
    }


def _ranking_baselines(data_dir: str) -> dict:
    """Top-10 by train popularity and at random, through the same ranking evaluation (and
    the same candidates and relevant items) as our models, at MMR lambda 1."""
    from mtl_jax import configlib, ranking
    from mtl_jax.data import load_dataset

    config = configlib.load_config_file(str(_ROOT / "configs" / "movielens.py"))
    config.data.data_dir = data_dir
    dataset = load_dataset(config.data, config.seed)
    c = config.ranking
    c.mmr_lambdas = (1.0,)
    c.fusion, c.fusion_mode = {"like": 1.0}, "sum"  # each scorer fills "like" with its score
    counts = np.bincount(
        dataset.train.features["item_id"], minlength=dataset.features[1].vocab_size
    )
    rng = np.random.default_rng(0)
    random_scores = rng.random(len(counts))
    scorers = {
        "popularity": lambda split: {"like": counts[split.features["item_id"]].astype(float)},
        "random": lambda split: {"like": random_scores[split.features["item_id"]]},
    }
    out = {}
    for name, predict in scorers.items():
        result = ranking.evaluate_ranking(predict, dataset, c)
        out[name] = result["mmr_lambda=1"]
        print(name, {k: round(v, 4) for k, v in out[name].items()}, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="", help="MovieLens files placed by hand")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path(__file__).parent / "results" / "movielens_baselines.json",
    )
    args = parser.parse_args()
    try:
        import pandas as pd
        from surprise import Dataset, Reader, accuracy
    except ImportError as e:
        raise SystemExit(
            f"needs scikit-surprise and pandas: pip install -e '.[experiments]' ({e})"
        ) from e

    data = movielens.load(movielens.fetch(args.data_dir or None))
    train, val, test = movielens.temporal_split(data.user, data.item, data.timestamp)
    fit_rows = np.concatenate([train, val])
    frame = pd.DataFrame({"u": data.user, "i": data.item, "r": data.rating.astype(float)})
    trainset = Dataset.load_from_df(frame.iloc[fit_rows], Reader(rating_scale=(1, 5)))
    trainset = trainset.build_full_trainset()
    testset = list(frame.iloc[test].itertuples(index=False, name=None))

    mean = float(frame.r.iloc[fit_rows].mean())
    errors = frame.r.iloc[test].to_numpy() - mean
    rows = [
        {
            "model": "global_mean",
            "seed": None,
            "rmse": float(np.sqrt(np.mean(errors**2))),
            "mae": float(np.mean(np.abs(errors))),
            "fit_s": 0.0,
        }
    ]
    for seed in args.seeds:
        for name, model in _surprise_models(seed).items():
            if name == "baseline_only" and seed != args.seeds[0]:
                continue  # deterministic: one fit is enough
            start = time.perf_counter()
            model.fit(trainset)
            fit_s = time.perf_counter() - start
            predictions = model.test(testset)
            rows.append(
                {
                    "model": name,
                    "seed": None if name == "baseline_only" else seed,
                    "rmse": float(accuracy.rmse(predictions, verbose=False)),
                    "mae": float(accuracy.mae(predictions, verbose=False)),
                    "fit_s": fit_s,
                }
            )
            print(f"{name:<14} seed {rows[-1]['seed']}: rmse {rows[-1]['rmse']:.4f} "
                  f"mae {rows[-1]['mae']:.4f} ({fit_s:.0f} s)", flush=True)  # fmt: skip
    result = {
        "split_sizes": {"fit (train+validation)": len(fit_rows), "test": len(test)},
        "commit": reporting.git_commit(),
        "rows": rows,
        "ranking": _ranking_baselines(args.data_dir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    reporting.write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
