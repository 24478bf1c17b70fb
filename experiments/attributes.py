"""Attribute tasks where they are a real question: an item's category for items never seen
in training (e-commerce), a user's topic for users never seen in training (news, social).

  python experiments/attributes.py --seeds=3 --workdir=runs/attributes \\
      --out=experiments/results/attributes.md

For each variant and seed it trains the config (``:cold`` holds 10% of the items or users,
drawn with the seed, out of training; see configs/ecommerce.py, news.py, social.py) and
reads the attribute task's test accuracy on the cold and the warm rows (results.json
``test_subsets``). On warm rows the attribute is a lookup of a trained id embedding; on
cold rows the model has only what a deployed system would know: for items their brand,
price and (``:cold_text``) title, for users their history. Next to the model, two
references on the same cold rows, computed from the training split only:

- majority: the most common class in training;
- rule: e-commerce, the category most common among the training items of the item's
  brand; news and social, the user's ``history_topic`` where the user has clicked (liked)
  before, else the majority class.

Accuracy is reported over cold rows (impressions: popular items and active users weigh
more, so one popular cold item can move a seed) and over cold ids (each unseen item or
user's mean accuracy over its rows, averaged over ids: what "the category of a new item"
asks). Paired per seed (the model and the references see the same rows), with 95% t
intervals. Runs already finished in ``--workdir`` are reused.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0 .. seeds-1 (each its own cold draw).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/attributes", "Where the runs are (re)used.")
_OUT = flags.DEFINE_string("out", str(ROOT / "experiments/results/attributes.md"), "Report.")
_VARIANTS = flags.DEFINE_list("variants", [], "Subset of the variants (default: all).")

# name: (config, attribute task, id kind of the cold subsets)
VARIANTS = {
    "ecommerce_cold": ("configs/ecommerce.py:cold", "category", "items"),
    "ecommerce_cold_text": ("configs/ecommerce.py:cold_text", "category", "items"),
    "news_cold": ("configs/news.py:cold", "topic", "users"),
    "social_cold": ("configs/social.py:cold", "topic", "users"),
}


def rule_predictions(dataset, task: str, kind: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The references' predictions for test ``rows``: majority class and the id-free rule."""
    train, test = dataset.train, dataset.test.take(rows)
    num_classes = next(t.num_classes for t in dataset.tasks if t.name == task)
    labels = train.labels[task]
    majority = int(np.bincount(labels, minlength=num_classes).argmax())
    if kind == "items":  # the brand's most common category among training items
        brand, item = train.features["brand"], train.features["item_id"]
        _, first = np.unique(item, return_index=True)  # one row per training item
        brands = next(f.vocab_size for f in dataset.features if f.name == "brand")
        table = np.zeros((brands, num_classes), np.int64)
        np.add.at(table, (brand[first], labels[first]), 1)
        rule = np.where(table.sum(1) > 0, table.argmax(1), majority)[test.features["brand"]]
    else:  # the user's most clicked topic so far, if any
        history = test.features["history_topic"]
        rule = np.where(history < num_classes, history, majority)
    return {"majority": np.full(len(rows), majority), "rule": rule, "labels": test.labels[task]}


def measure(variant: str, seed: int) -> dict:
    from mtl_jax import configlib
    from mtl_jax.train import train_and_evaluate
    from mtl_jax.trainer import load_run_dataset

    path, task, kind = VARIANTS[variant]
    config = configlib.load_config_file(str(ROOT / path))
    with config.unlocked():
        config.seed = seed
    workdir = pathlib.Path(_WORKDIR.value) / f"{variant}_{seed}"
    results = train_and_evaluate(config, str(workdir))
    if results is None:  # a finished run re-reports; None only when stopped early
        raise SystemExit(f"{workdir}: the run did not finish")
    dataset = load_run_dataset(config)
    cold = dataset.test_subsets[f"cold_{kind}"]
    refs = rule_predictions(dataset, task, kind, cold)
    model = _best_predictions(config, dataset, workdir, cold)[task].argmax(-1)
    ids = dataset.test.take(cold).features["item_id" if kind == "items" else "user_id"]
    subsets = results["test_subsets"]
    out = {
        "seed": seed,
        "commit": results["commit"],
        "cold_rows": int(len(cold)),
        "cold_ids": int(len(np.unique(ids))),
        "warm": subsets[f"warm_{kind}"][task]["accuracy"],
    }
    for name, pred in (("model", model), ("majority", refs["majority"]), ("rule", refs["rule"])):
        correct = (pred == refs["labels"]).astype(np.float64)
        out[f"{name}_rows"] = float(correct.mean())
        out[f"{name}_ids"] = float(_mean_over_ids(correct, ids))
    # results.json's subset accuracy is the same rows through the same checkpoint
    assert abs(out["model_rows"] - subsets[f"cold_{kind}"][task]["accuracy"]) < 1e-6
    return out


def _mean_over_ids(values: np.ndarray, ids: np.ndarray) -> float:
    """Each id's mean of ``values`` over its rows, averaged over the ids."""
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return float(np.mean(np.bincount(inverse, weights=values) / counts))


def _best_predictions(config, dataset, workdir: pathlib.Path, rows: np.ndarray) -> dict:
    """The run's best checkpoint's predictions on test ``rows``."""
    from mtl_jax import parallel
    from mtl_jax.trainer import Trainer

    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    return trainer.predict(trainer.best_params(workdir), dataset.test.take(rows))[0]


def report(measured: dict[str, list[dict]]) -> str:
    from mtl_jax import reporting

    lines = [
        "# Attribute tasks on unseen items and users",
        "",
        "Test accuracy of the attribute task on cold rows (ids never trained; `ids`: each "
        "cold id's accuracy over its rows averaged over the ids, `rows`: over impressions, "
        "with the counts per seed) and on warm rows, mean +- std over seeds, next to the "
        "references on the same cold rows; paired differences per seed with 95% t "
        "intervals (see the docstring of experiments/attributes.py for the references).",
        "",
    ]
    header = [
        "variant", "task", "over", "seeds", "cold (model)", "warm rows (model)", "cold majority",
        "cold rule", "model - rule (cold)", "model - majority (cold)",
    ]  # fmt: skip
    fmt = lambda d: f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"  # noqa: E731
    rows = []
    for variant, runs in measured.items():
        _, task, _ = VARIANTS[variant]
        for over in ("ids", "rows"):
            col = {k: [r[f"{k}_{over}"] for r in runs] for k in ("model", "majority", "rule")}
            diff = {
                ref: reporting.paired_interval(np.subtract(col["model"], col[ref]))
                for ref in ("rule", "majority")
            }
            count = "/".join(str(r[f"cold_{over}"]) for r in runs)
            rows.append([
                variant, task, f"{over} ({count})", str(len(runs)),
                reporting.mean_std(col["model"]), reporting.mean_std([r["warm"] for r in runs]),
                reporting.mean_std(col["majority"]), reporting.mean_std(col["rule"]),
                fmt(diff["rule"]), fmt(diff["majority"]),
            ])  # fmt: skip
    lines += reporting.markdown_table(header, rows)
    commits = sorted({r["commit"][:7] for runs in measured.values() for r in runs})
    lines += [
        "",
        f"Runs at commit(s) {', '.join(commits)}; per-seed values in the JSON. Made with",
        "",
        "    python experiments/attributes.py " + " ".join(sys.argv[1:]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    names = _VARIANTS.value or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; valid: {list(VARIANTS)}")
    from mtl_jax import reporting

    measured = {}
    for name in names:
        measured[name] = []
        for seed in range(_SEEDS.value):
            print(f"{name} seed {seed} ...", flush=True)
            measured[name].append(measure(name, seed))
            print(json.dumps({"variant": name, **measured[name][-1]}), flush=True)
    text = report(measured)
    print(text)
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    reporting.write_json(out.with_suffix(".json"), measured)


if __name__ == "__main__":
    app.run(main)
