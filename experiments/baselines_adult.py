"""Gradient-boosting baseline on our Adult split, one model per task: what a tabular user
would pick instead of a multi-task network.

  pip install -e '.[experiments]'
  python experiments/baselines_adult.py --seeds=5

For each task of configs/adult.py: scikit-learn's ``HistGradientBoostingClassifier`` on the
same train split (the encoded columns our models read: dense features as numbers, the
categorical ones as categories), early-stopped on our validation split (its AUC, up to
``--max_iter`` rounds), test AUC reported, mean +- std over ``--seeds`` (the model's own
seed; the split is the config's, data_seed 0). Writes experiments/results/adult_baselines.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from mtl_jax import configlib, reporting
from mtl_jax.data import load_dataset
from mtl_jax.metrics import auc

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _matrix(split, features) -> np.ndarray:
    columns = []
    for spec in features:
        col = split.features[spec.name]
        columns.append(col.reshape(len(col), -1).astype(np.float64))
    return np.concatenate(columns, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(_ROOT / "configs" / "adult.py"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max_iter", type=int, default=500)
    parser.add_argument(
        "--out", default=str(_ROOT / "experiments" / "results" / "adult_baselines.json")
    )
    args = parser.parse_args()
    from sklearn.ensemble import HistGradientBoostingClassifier

    config = configlib.load_config_file(args.config)
    dataset = load_dataset(config.data, configlib.data_seed(config), config.features)
    features = dataset.features
    categorical = [not f.is_dense for f in features]
    x = {s: _matrix(dataset.split(s), features) for s in ("train", "validation", "test")}
    results = {}
    for task in dataset.tasks:
        aucs, rounds = [], []
        for seed in range(args.seeds):
            split = {s: dataset.split(s) for s in x}
            keep = {s: split[s].masks[task.name] > 0 for s in x}
            y = {s: split[s].labels[task.name] for s in x}
            best, best_auc = None, -1.0
            for n in range(50, args.max_iter + 1, 50):  # rounds chosen on validation AUC
                model = HistGradientBoostingClassifier(
                    max_iter=n, categorical_features=categorical, random_state=seed,
                    early_stopping=False,
                )  # fmt: skip
                model.fit(x["train"][keep["train"]], y["train"][keep["train"]])
                val = model.predict_proba(x["validation"][keep["validation"]])[:, 1]
                value = auc(y["validation"][keep["validation"]], val)
                if value > best_auc:
                    best, best_auc = model, value
            test = best.predict_proba(x["test"][keep["test"]])[:, 1]
            aucs.append(float(auc(y["test"][keep["test"]], test)))
            rounds.append(int(best.max_iter))
        results[task.name] = {
            "test_auc_mean": float(np.mean(aucs)),
            "test_auc_std": float(np.std(aucs)),
            "test_auc": aucs,
            "rounds": rounds,
        }
        print(f"{task.name:15s} test AUC {np.mean(aucs):.4f} +- {np.std(aucs):.4f} "
              f"(rounds {rounds})")  # fmt: skip
    out = {
        "model": "sklearn HistGradientBoostingClassifier, rounds chosen on validation AUC",
        "sizes": dataset.sizes(),
        "results": results,
        "commit": reporting.git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
