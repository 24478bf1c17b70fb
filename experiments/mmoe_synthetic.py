"""The MMoE paper's synthetic experiment at its protocol: Shared-Bottom, OMoE and MMoE at task
correlations 1.0, 0.9 and 0.5, S independent runs each, every run its own problem (task
directions, sine shapes, inputs, noise) and its own initialisation, all S trained at once in
one jitted, vmapped step per (trunk, correlation).

  pip install -e '.[experiments]'  # matplotlib for the plots, scipy for the intervals
  python experiments/mmoe_synthetic.py                     # 200 seeds, alpha_std 1 and 3
  python experiments/mmoe_synthetic.py --seeds=8 --steps=200 --train_examples=4096 \\
      --out=/tmp/mmoe_smoke                                # a smoke run in seconds

Run ``s`` of every trunk and correlation sees the same problem drawn from seed ``s`` (at
correlation p its second task's weights are ``p u1 + sqrt(1 - p^2) u2`` with the same
``u1, u2``), so trunks and correlations are compared seed by seed: paired differences with
95% t intervals. Each run trains ``--steps`` steps of ``--batch_size`` examples drawn with
replacement from its ``--train_examples`` training examples, and its test loss (mean over
both tasks of the mean squared error on ``--test_examples`` fresh examples of the same
problem) is recorded every ``--curve_every`` steps. ``alpha_i ~ N(0, alpha_std^2)`` and
``beta_i ~ N(0, 1)`` (the paper does not publish its values): ``--alpha_stds`` sweeps that
choice. Writes ``<out>.json``, ``<out>.md``, ``<out>_curves.png`` and
``<out>_trainability.png``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from mtl_jax import configlib, parallel, reporting
from mtl_jax.data import mmoe_synthetic as synthetic
from mtl_jax.step import make_train_step, task_loss_sums
from mtl_jax.train import Trainer

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_SEEDS = flags.DEFINE_integer("seeds", 200, "Independent runs per (trunk, correlation).")
_STEPS = flags.DEFINE_integer("steps", 10_000, "Train steps per run.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Examples per step.")
_TRAIN = flags.DEFINE_integer("train_examples", 100_000, "Training examples per problem.")
_TEST = flags.DEFINE_integer("test_examples", 2_000, "Fresh test examples per problem.")
_CURVE_EVERY = flags.DEFINE_integer("curve_every", 500, "Steps between test-loss points.")
_CORRELATIONS = flags.DEFINE_list("correlations", ["1.0", "0.9", "0.5"], "Task correlations.")
_MODELS = flags.DEFINE_list("models", ["shared_bottom", "omoe", "mmoe"], "Trunks to compare.")
_ALPHA_STDS = flags.DEFINE_list("alpha_stds", ["1.0", "3.0"], "Std of the sines' alpha_i.")
_NUM_EXPERTS = flags.DEFINE_integer("num_experts", 8, "Experts of OMoE / MMoE.")
_EXPERT_UNITS = flags.DEFINE_integer("expert_units", 16, "Units per expert.")
_OUT = flags.DEFINE_string("out", str(_ROOT / "experiments" / "results" / "mmoe_synthetic"), "")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How every run trains and is measured (the flags of the same names)."""

    steps: int = 10_000
    batch_size: int = 128
    train_examples: int = 100_000
    test_examples: int = 2_000
    curve_every: int = 500
    num_experts: int = 8
    expert_units: int = 16

    @classmethod
    def from_flags(cls) -> Protocol:
        return cls(**{f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(cls)})


def _config(model: str, protocol: Protocol):
    """configs/mmoe_synthetic.py with ``model`` as trunk, matched in size as in the paper:
    OMoE and MMoE have ``num_experts`` experts of ``expert_units`` units, Shared-Bottom one
    bottom of ``num_experts * expert_units`` units."""
    config = configlib.load_config_file(str(_ROOT / "configs" / "mmoe_synthetic.py"))
    units = protocol.expert_units
    config.model.trunk = model
    config.model.num_experts = protocol.num_experts
    config.model.trunk_hidden = (
        (units * protocol.num_experts,) if model == "shared_bottom" else (units,)
    )
    config.train.num_steps = protocol.steps
    config.train.batch_size = protocol.batch_size
    return config


class SeedsRunner:
    """One trunk at one correlation: ``init`` and ``train`` over a leading seeds axis."""

    def __init__(self, model: str, correlation: float, alpha_std: float, protocol: Protocol):
        config = _config(model, protocol)
        self.protocol = protocol
        batch, n_train, n_test = (
            protocol.batch_size,
            protocol.train_examples,
            protocol.test_examples,
        )
        d = config.data
        # The Trainer builds the model, optimiser and balancing rule from the config; its
        # dataset (a small draw) only gives the schema and the heads' starting biases.
        schema = synthetic.simulate_mmoe_synthetic(
            correlation, num_train=512, num_validation=64, num_test=64, dim=d.dim,
            num_sines=d.num_sines, alpha_std=alpha_std,
        )  # fmt: skip
        trainer = Trainer(config, schema, mesh=parallel.make_mesh(1))
        self.num_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
        step = make_train_step(trainer.model, trainer.train_tasks, trainer.tx, trainer.rule)

        def examples(problem, idx):
            return synthetic.examples(problem, idx, correlation, d.scale, d.noise_std)

        def train_one(state, problem, order_key, num_steps):
            def body(state, _):
                idx = jax.random.randint(
                    jax.random.fold_in(order_key, state.step), (batch,), 0, n_train
                )
                x, labels, _ = examples(problem, idx)
                masks = {t: jnp.ones_like(v) for t, v in labels.items()}
                state, _ = step(state, {"features": {"x": x}, "labels": labels, "masks": masks})
                return state, None

            return jax.lax.scan(body, state, None, length=num_steps)[0]

        def test_loss(params, problem):
            idx = n_train + jnp.arange(n_test)
            x, labels, _ = examples(problem, idx)
            logits = trainer.model.apply({"params": params}, {"x": x}, train=False)
            masks = {t: jnp.ones_like(v) for t, v in labels.items()}
            sums, counts = task_loss_sums(trainer.tasks, logits, {"labels": labels, "masks": masks})
            return jnp.mean(sums / counts)  # regression tasks: each task's MSE

        def init_one(seed):
            key = jax.random.PRNGKey(seed)
            problem = synthetic.draw_problem(
                jax.random.fold_in(key, 0), d.dim, d.num_sines, alpha_std
            )
            state = trainer._init_fn(jax.random.fold_in(key, 1))
            return state, problem, jax.random.fold_in(key, 2)

        self._init = jax.jit(jax.vmap(init_one))
        self._train = jax.jit(
            jax.vmap(train_one, in_axes=(0, 0, 0, None)), static_argnums=3, donate_argnums=0
        )
        self._test = jax.jit(jax.vmap(test_loss))

        def label_correlation(problem):
            _, labels, _ = examples(problem, jnp.arange(n_test))
            return jnp.corrcoef(labels["y1"], labels["y2"])[0, 1]

        self._label_correlation = jax.jit(jax.vmap(label_correlation))

    def run(self, seeds: np.ndarray, progress) -> dict:
        """Train every seed; the test-loss curve ``(points, seeds)`` and the final losses."""
        state, problem, order = self._init(jnp.asarray(seeds))
        curve = [np.asarray(self._test(state.params, problem))]
        steps = [0]
        done = 0
        total = self.protocol.steps
        while done < total:
            n = min(self.protocol.curve_every, total - done)
            state = self._train(state, problem, order, n)
            done += n
            steps.append(done)
            curve.append(np.asarray(self._test(state.params, problem)))
            progress(done)
        return {
            "steps": steps,
            "test_loss": np.stack(curve),
            "label_correlation": np.asarray(self._label_correlation(problem)),
        }


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """``a - b`` seed by seed: mean, 95% t interval, and how many seeds have ``a < b``."""
    summary = reporting.paired_interval(a - b)
    return {**summary, "a_lower": int(np.sum(a < b)), "seeds": int(a.size)}


def _fmt(p: dict) -> str:
    return f"{p['mean']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}], {p['a_lower']}/{p['seeds']}"


# How a run is summarised: its loss at the end, and its mean loss over the recorded points
# after the start (the area under its learning curve: lower = trains faster or further).
SUMMARIES = {
    "final": lambda loss: loss[-1],
    "curve_mean": lambda loss: loss[1:].mean(0),
}


def analyse(block: dict, models: list[str], correlations: list[str]) -> None:
    """Adds to ``block`` (one alpha_std) the paired comparisons of every pair of trunks at
    every correlation, and how each pair's difference changes from the first correlation
    to the last (the paper's claim: MMoE gains as the tasks become less related)."""
    pairs = [(a, b) for a in models for b in models if a < b]
    first, last = correlations[0], correlations[-1]
    block["paired"], block["trend"] = {}, {}
    for summary, of in SUMMARIES.items():
        value = {m: {c: of(block[m][c]["test_loss"]) for c in correlations} for m in models}
        block["paired"][summary] = {
            f"{a} - {b}": {c: paired(value[a][c], value[b][c]) for c in correlations}
            for a, b in pairs
        }
        block["trend"][summary] = {
            f"{a} - {b}": paired(value[a][last] - value[b][last], value[a][first] - value[b][first])
            for a, b in pairs
        }


def _report(results: dict, commit: str, seconds: float) -> str:
    models, correlations = _MODELS.value, _CORRELATIONS.value
    lines = [
        "# MMoE synthetic experiment at the paper's protocol",
        "",
        f"{_SEEDS.value} runs per trunk and correlation, each its own problem and "
        f"initialisation, {_STEPS.value} steps of batch {_BATCH.value} on "
        f"{_TRAIN.value:,} training examples, test loss (mean over both tasks of the MSE; "
        f"the noise floor is 0.01) on {_TEST.value:,} fresh examples of the run's problem, "
        f"every {_CURVE_EVERY.value} steps; commit {reporting.short_commit(commit)}, "
        f"{seconds / 60:.0f} minutes on this machine. `final`: the loss at the last step; "
        "`curve_mean`: the mean loss over the recorded points after step 0 (lower: trains "
        "faster or further).",
        "",
    ]
    for alpha in _ALPHA_STDS.value:
        block = results[alpha]
        lines += [f"## alpha_std = {alpha}", ""]
        label_corr = {
            c: float(np.mean(block[models[0]][c]["label_correlation"])) for c in correlations
        }
        lines += [
            "Pearson correlation of the two labels (mean over problems): "
            + ", ".join(f"{c}: {v:.3f}" for c, v in label_corr.items())
            + ".",
            "",
            "Final test loss over the runs: mean +- std; 10%, 50% and 90% quantiles "
            "(trainability: the spread over runs).",
            "",
        ]
        rows = []
        for m in models:
            cells = []
            for c in correlations:
                f = block[m][c]["test_loss"][-1]
                q10, q50, q90 = np.quantile(f, [0.1, 0.5, 0.9])
                cells.append(
                    f"{f.mean():.4f} +- {f.std(ddof=1):.4f}; {q10:.3f} / {q50:.3f} / {q90:.3f}"
                )
            rows.append([m, f"{block[m]['num_params']:,}", *cells])
        lines += reporting.markdown_table(
            ["trunk", "params", *(f"corr {c}" for c in correlations)], rows
        )
        lines += [
            "",
            "Paired differences (a - b: mean [95% CI], runs where a is lower):",
            "",
        ]
        rows = [
            [name, summary] + [_fmt(by_corr[c]) for c in correlations]
            for summary, pairs in block["paired"].items()
            for name, by_corr in pairs.items()
        ]
        lines += reporting.markdown_table(
            ["a - b", "summary", *(f"corr {c}" for c in correlations)], rows
        )
        lines += [
            "",
            f"Change of each paired difference from correlation {correlations[0]} to "
            f"{correlations[-1]} (negative: trunk a gains on b as the tasks become less "
            "related, the paper's claim for MMoE):",
            "",
        ]
        rows = [
            [name, summary, _fmt(v)]
            for summary, pairs in block["trend"].items()
            for name, v in pairs.items()
        ]
        lines += reporting.markdown_table(["a - b", "summary", "change"], rows)
        lines.append("")
    return "\n".join(lines)


def _plots(results: dict, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas, correlations = _ALPHA_STDS.value, _CORRELATIONS.value
    for kind in ("curves", "trainability"):
        fig, axes = plt.subplots(
            len(alphas), len(correlations), figsize=(4.5 * len(correlations), 3.6 * len(alphas)),
            squeeze=False,
        )  # fmt: skip
        for row, alpha in zip(axes, alphas, strict=True):
            for ax, c in zip(row, correlations, strict=True):
                for m in _MODELS.value:
                    run = results[alpha][m][c]
                    if kind == "curves":
                        loss = run["test_loss"]
                        mean = loss.mean(1)
                        sem = loss.std(1, ddof=1) / np.sqrt(loss.shape[1])
                        ax.plot(run["steps"], mean, label=m)
                        ax.fill_between(
                            run["steps"], mean - 1.96 * sem, mean + 1.96 * sem, alpha=0.25
                        )
                        ax.set_yscale("log")
                        ax.set_xlabel("step")
                    else:
                        finals = [results[alpha][n][c]["test_loss"][-1] for n in _MODELS.value]
                        bins = np.histogram_bin_edges(np.concatenate(finals), bins=30)
                        ax.hist(run["test_loss"][-1], bins=bins, alpha=0.5, label=m)
                        ax.set_xlabel("final test loss")
                ax.set_title(f"alpha_std {alpha}, correlation {c}")
                ax.grid(alpha=0.3)
            row[0].set_ylabel("test loss" if kind == "curves" else "runs")
        axes[0][0].legend()
        fig.tight_layout()
        fig.savefig(f"{out}_{kind}.png", dpi=110)
        plt.close(fig)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    seeds = np.arange(_SEEDS.value)
    protocol = Protocol.from_flags()
    models, correlations = _MODELS.value, _CORRELATIONS.value
    cells = [(a, m, c) for a in _ALPHA_STDS.value for c in correlations for m in models]
    results: dict = {a: {m: {} for m in models} for a in _ALPHA_STDS.value}
    start = time.perf_counter()
    for i, (alpha, model, corr) in enumerate(cells):
        runner = SeedsRunner(model, float(corr), float(alpha), protocol)

        label = f"[{i + 1}/{len(cells)}] alpha_std {alpha} {model:<13} corr {corr}"

        def progress(step, i=i, label=label):
            elapsed = time.perf_counter() - start
            fraction = (i + step / _STEPS.value) / len(cells)
            left = reporting.format_eta(elapsed / fraction - elapsed)
            print(
                f"{label}: step {step}/{_STEPS.value}, {left} left",
                flush=True,
            )

        run = runner.run(seeds, progress)
        results[alpha][model][corr] = run
        results[alpha][model]["num_params"] = int(runner.num_params)
    for alpha in _ALPHA_STDS.value:
        analyse(results[alpha], models, correlations)
    seconds = time.perf_counter() - start
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = reporting.git_commit()
    text = _report(results, commit, seconds)
    print(text)
    out.with_suffix(".md").write_text(text)
    reporting.write_json(
        out.with_suffix(".json"),
        {
            "commit": commit,
            "seconds": seconds,
            "flags": {
                f: flags.FLAGS[f].value
                for f in (
                    "seeds",
                    "steps",
                    "batch_size",
                    "train_examples",
                    "test_examples",
                    "curve_every",
                    "correlations",
                    "models",
                    "alpha_stds",
                    "num_experts",
                    "expert_units",
                )
            },  # fmt: skip
            "results": results,
        },
    )
    _plots(results, out)


if __name__ == "__main__":
    app.run(main)
