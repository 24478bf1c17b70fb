"""Reference outputs of TorchJD's aggregators for tests/test_balancing.py.

  python -m venv /tmp/jdvenv && /tmp/jdvenv/bin/pip install "torchjd[quadprog_projector]==0.18.*" \
      "qpsolvers[quadprog]"
  /tmp/jdvenv/bin/python experiments/torchjd_reference.py --out=tests/data/torchjd_0_18.json

Random task-gradient matrices (float64, seeded, so anyone can regenerate them) and what
TorchJD 0.18 returns for each aggregator we implement independently; the test checks that
ours agree (cosine >= 0.999 and the same norm to 1e-3).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np


def matrices() -> list[np.ndarray]:
    out = []
    for seed in range(8):
        rng = np.random.default_rng(1000 + seed)
        t, d = 2 + seed % 4, 7
        g = rng.normal(size=(t, d)) * rng.uniform(0.3, 3.0, size=(t, 1))
        out.append(g)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    import torch
    import torchjd
    from torchjd import aggregation as agg

    aggregators = {
        "config": agg.ConFIG(),
        "dualproj": agg.DualProj(),
        "fairgrad_alpha1": agg.FairGrad(alpha=1.0),
        "fairgrad_alpha2": agg.FairGrad(alpha=2.0),
        "upgrad": agg.UPGrad(),
    }
    cases = []
    for g in matrices():
        matrix = torch.tensor(g, dtype=torch.float64)
        cases.append(
            {
                "matrix": g.tolist(),
                **{name: a(matrix).tolist() for name, a in aggregators.items()},
            }
        )
    # Stateful weightings: the weights after each Gramian of one sequence (3 tasks).
    rng = np.random.default_rng(77)
    sequence = [rng.normal(size=(3, 6)) * rng.uniform(0.5, 2.0, size=(3, 1)) for _ in range(12)]
    gramians = [torch.tensor(g @ g.T, dtype=torch.float64) for g in sequence]
    stateful = {
        "modo": agg.MoDoWeighting(gamma=0.1, rho=0.1),
        "sdmgrad": agg.SDMGradWeighting(lr=10.0, momentum=0.5, n_iter=20, lambda_=0.3),
    }
    excess = {
        "excess_mtl": agg.ExcessMTL(robust_step_size=1.0, n_warmup_steps=0),
        "excess_mtl_warmup3": agg.ExcessMTL(robust_step_size=0.5, n_warmup_steps=3),
    }
    matrices_t = [torch.tensor(g, dtype=torch.float64) for g in sequence]
    sequences = {
        "gramians": [g.tolist() for g in gramians],
        "matrices": [g.tolist() for g in sequence],
        **{name: [w(g).tolist() for g in gramians] for name, w in stateful.items()},
        **{name: [a(m).tolist() for m in matrices_t] for name, a in excess.items()},
    }
    version = getattr(torchjd, "__version__", "0.18")
    payload = {"torchjd": version, "cases": cases, "sequences": sequences}
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
