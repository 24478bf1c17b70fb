"""Paper-style ablations in one command: every cell of a sweep x seeds, then the tables
(Markdown, CSV, LaTeX) and plots in the workdir.

  python experiments/ablate.py --config=configs/movielens.py --sweep=arch_x_method \\
      --seeds=3 --workdir=runs/ablate/movielens

Sweeps: ``sweep(name)`` in the config file, or ``experiments/sweeps/<name>.py`` (see
mtl_jax/sweeps.py). Resumable: rerun the same command; finished cells are skipped and an
interrupted cell resumes from its checkpoint. ``--parallel_seeds`` (default) trains a cell's
seeds together in one vmapped step (mtl_jax/seeds.py); simulated datasets are drawn from
the seed, so pin the draw with ``--config.data_seed=0`` or pass ``--noparallel_seeds``.
``--report_only`` rebuilds the tables and plots from what has finished. ``--paired=CELL``
adds ``paired.md``: every cell's test delta-m% (and each metric) minus CELL's, seed by
seed, with 95% t intervals (which differences are beyond seed noise).

Writes into the workdir: ``<cell>/seed_<s>/`` runs, ``table.md|csv|tex``, ``metrics.png``,
``pareto.png``, ``conflict.png``, ``sweep_status.json``.
"""

from __future__ import annotations

import logging
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mtl_jax import ablation, compilation_cache, configlib, sweeps

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/movielens.py")
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep name (experiments/sweeps/<name>.py) or file.")
_SEEDS = flags.DEFINE_string("seeds", "3", "A count (3 = seeds 0,1,2) or a list (0,4,7).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the cells, tables and plots.")
_PARALLEL = flags.DEFINE_bool("parallel_seeds", True, "Train a cell's seeds in one vmapped step.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Cells trained at once, each in its own process.")
_REFERENCE = flags.DEFINE_string("reference", "single_task", "Cell that delta-m% compares to.")
_METRICS = flags.DEFINE_list("metrics", [], "task/metric columns (default: every test metric).")
_PARETO = flags.DEFINE_list("pareto", [], "Two task/metric columns for the Pareto plot.")
_PAIRED = flags.DEFINE_string(
    "paired", "", "A cell (e.g. mmoe-ew) every other cell is compared with seed by seed."
)
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rebuild tables and plots.")
_PLOTS = flags.DEFINE_bool("plots", True, "Write the PNG plots (needs matplotlib).")
_XLA_CACHE = flags.DEFINE_string("compilation_cache", "default", compilation_cache.FLAG_HELP)
flags.mark_flags_as_required(["config", "sweep", "workdir"])


def parse_seeds(text: str) -> list[int]:
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) == 1:
        return list(range(int(parts[0])))
    return [int(p) for p in parts]


def report(workdir: pathlib.Path) -> ablation.Summary:
    summary = ablation.summarize(ablation.load_cells(workdir), _REFERENCE.value, _METRICS.value)
    paths = ablation.write_tables(summary, workdir)
    if _PLOTS.value:
        from mtl_jax import ablation_plots

        pareto = [tuple(c.split("/", 1)) for c in _PARETO.value]
        paths += ablation_plots.write_plots(summary, workdir, pareto)
    print(ablation.markdown(summary))
    if _PAIRED.value:
        baseline = _PAIRED.value
        text = ablation.markdown_paired(ablation.paired(summary, baseline), baseline)
        for column in summary.columns:  # and each metric on its own
            rows = ablation.paired(summary, baseline, column)
            text += "\n" + ablation.markdown_paired(rows, baseline, " ".join(column), digits=4)
        (workdir / "paired.md").write_text(text)
        paths.append(workdir / "paired.md")
        print(text)
    logging.getLogger("mtl_jax").info("wrote %s", ", ".join(str(p) for p in paths))
    return summary


def main(argv: list[str]) -> None:
    del argv
    absl_logging.get_absl_handler().setFormatter(
        logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    )
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's per-save chatter
    logging.getLogger("mtl_jax").setLevel(logging.INFO)
    configlib.check_override_keys(_CONFIG.value, sys.argv[1:])
    compilation_cache.enable_from_flag(_XLA_CACHE.value)
    workdir = pathlib.Path(_WORKDIR.value)
    if not _REPORT_ONLY.value:
        config_file = config_flags.get_config_filename(flags.FLAGS["config"])
        cells = sweeps.load_sweep(_SWEEP.value, _CONFIG.value, config_file)
        sweeps.run_sweep(
            _CONFIG.value,
            cells,
            parse_seeds(_SEEDS.value),
            workdir,
            parallel_seeds=_PARALLEL.value,
            jobs=_JOBS.value,
        )
    report(workdir)


if __name__ == "__main__":
    app.run(main)
