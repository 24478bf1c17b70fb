"""The MMoE paper's synthetic experiment: Shared-Bottom, OMoE and MMoE at task correlations
1.0, 0.9 and 0.5, several seeds each; a table of final test losses and a loss-curve plot.

  pip install -e '.[experiments]'  # matplotlib for the plot
  python experiments/mmoe_synthetic.py --seeds=5

Models are matched in size as in the paper: OMoE and MMoE have ``num_experts`` experts of
``expert_units`` units, Shared-Bottom one bottom of ``num_experts * expert_units`` units.
Each run trains ``--steps`` steps (no early stopping) and records the test loss, the mean
over both tasks of the mean squared error, every ``--curve_every`` steps. Writes
experiments/results/mmoe_synthetic.{json,md,png}.
"""

from __future__ import annotations

import pathlib
import statistics
import time

import jax
import numpy as np
from absl import app, flags, logging

from mtl_jax import configlib, parallel, reporting
from mtl_jax.data import load_dataset
from mtl_jax.data.mmoe_synthetic import label_correlation
from mtl_jax.train import Trainer

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds per (model, correlation).")
_STEPS = flags.DEFINE_integer("steps", 4000, "Train steps per run.")
_CURVE_EVERY = flags.DEFINE_integer("curve_every", 200, "Steps between test-loss points.")
_CORRELATIONS = flags.DEFINE_list("correlations", ["1.0", "0.9", "0.5"], "Task correlations.")
_MODELS = flags.DEFINE_list("models", ["shared_bottom", "omoe", "mmoe"], "Trunks to compare.")
_NUM_EXPERTS = flags.DEFINE_integer("num_experts", 8, "Experts of OMoE / MMoE.")
_EXPERT_UNITS = flags.DEFINE_integer("expert_units", 16, "Units per expert.")
_OUT = flags.DEFINE_string("out", str(_ROOT / "experiments" / "results" / "mmoe_synthetic"), "")


def _config(model: str, correlation: float, seed: int):
    config = configlib.load_config_file(str(_ROOT / "configs" / "mmoe_synthetic.py"))
    units = _EXPERT_UNITS.value
    config.seed = seed
    config.data.correlation = correlation
    config.model.trunk = model
    config.model.num_experts = _NUM_EXPERTS.value
    config.model.trunk_hidden = (
        (units * _NUM_EXPERTS.value,) if model == "shared_bottom" else (units,)
    )
    config.train.num_steps = _STEPS.value
    return config


def _test_loss(trainer: Trainer, params, dataset) -> float:
    _, losses = trainer.predict(params, dataset.test)
    return float(np.mean(losses))


def run_one(model: str, correlation: float, seed: int) -> dict:
    config = _config(model, correlation, seed)
    dataset = load_dataset(config.data, seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    it = trainer.train_iterator()
    curve = [(0, _test_loss(trainer, state.params, dataset))]
    for step in range(1, config.train.num_steps + 1):
        state, _ = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
        if step % _CURVE_EVERY.value == 0:
            curve.append((step, _test_loss(trainer, state.params, dataset)))
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {
        "model": model,
        "correlation": correlation,
        "seed": seed,
        "label_correlation": label_correlation(dataset),
        "final_test_loss": curve[-1][1],
        "curve": curve,
        "num_params": int(num_params),
    }


def _table(runs: list[dict]) -> list[str]:
    lines = ["| model | params | " + " | ".join(f"corr {c}" for c in _CORRELATIONS.value) + " |"]
    lines.append("|" + " --- |" * (2 + len(_CORRELATIONS.value)))
    for model in _MODELS.value:
        cells = []
        for c in _CORRELATIONS.value:
            losses = [
                r["final_test_loss"]
                for r in runs
                if r["model"] == model and r["correlation"] == float(c)
            ]
            cells.append(reporting.mean_std(losses))
        params = next(r["num_params"] for r in runs if r["model"] == model)
        lines.append(f"| {model} | {params:,} | " + " | ".join(cells) + " |")
    return lines


def _plot(runs: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(_CORRELATIONS.value), figsize=(5 * len(_CORRELATIONS.value), 4), sharey=True
    )
    for ax, c in zip(np.atleast_1d(axes), _CORRELATIONS.value, strict=True):
        for model in _MODELS.value:
            curves = np.array(
                [
                    [loss for _, loss in r["curve"]]
                    for r in runs
                    if r["model"] == model and r["correlation"] == float(c)
                ]
            )
            steps = [s for s, _ in runs[0]["curve"]]
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(steps, mean, label=model)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_title(f"task correlation {c}")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("test loss (mean MSE of the two tasks)")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    runs = []
    total = len(_MODELS.value) * len(_CORRELATIONS.value) * _SEEDS.value
    start = time.perf_counter()
    for c in _CORRELATIONS.value:
        for model in _MODELS.value:
            for seed in range(_SEEDS.value):
                runs.append(run_one(model, float(c), seed))
                done = len(runs)
                eta = (time.perf_counter() - start) / done * (total - done)
                print(
                    f"[{done}/{total}] {model:<13} corr {c} seed {seed}: final test loss "
                    f"{runs[-1]['final_test_loss']:.4f} (ETA {eta:.0f} s)",
                    flush=True,
                )
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = reporting.git_commit()
    reporting.write_json(out.with_suffix(".json"), {"commit": commit, "runs": runs})
    label_corr = {
        c: statistics.mean(r["label_correlation"] for r in runs if r["correlation"] == float(c))
        for c in _CORRELATIONS.value
    }
    table = _table(runs)
    text = "\n".join(table)
    print(text)
    _plot(runs, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(
        "# MMoE synthetic experiment\n\n"
        f"Final test loss after {_STEPS.value} steps, mean +- std over {_SEEDS.value} seeds "
        f"(commit {commit[:7]}). Pearson correlation of the two labels at each weight cosine: "
        + ", ".join(f"{c}: {v:.3f}" for c, v in label_corr.items())
        + ".\n\n"
        + text
        + "\n\n![loss curves](mmoe_synthetic.png)\n"
    )


if __name__ == "__main__":
    app.run(main)
