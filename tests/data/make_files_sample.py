"""Writes tests/data/files_sample/{train,test}.csv: a small synthetic click log in the shape
of a user's own data (string user ids, large integer item ids, a category, a price with
gaps, a timestamp, pipe-separated tags, a title; labels click, a 1-5 rating and the
actions that followed ("cart|share", multilabel), the last two present only for clicks).
Deterministic: ``python tests/data/make_files_sample.py`` rewrites the same files.
configs/files.py reads them as its example."""

import csv
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).parent / "files_sample"
CATEGORIES = ("books", "games", "garden", "kitchen", "music", "toys")
TAGS = ("gift", "sale", "new", "eco", "bundle")
ACTIONS = ("cart", "share", "save")
ADJECTIVES = ("classic", "compact", "deluxe", "handmade", "vintage")


def main() -> None:
    rng = np.random.default_rng(2026)
    users, items = 60, 90
    user_taste = rng.normal(size=(users, len(CATEGORIES)))
    item_category = rng.integers(0, len(CATEGORIES), items)
    item_price = np.round(np.exp(rng.normal(3.0, 0.8, items)), 2)
    item_id = 10**12 + rng.choice(10**6, items, replace=False)  # large raw ids
    # The newer columns draw from a stream of their own, so the older ones stay as they were.
    extra = np.random.default_rng(7)
    item_tags = ["|".join(t for t in TAGS if extra.random() < 0.3) for _ in range(items)]
    item_title = [
        f"{ADJECTIVES[extra.integers(len(ADJECTIVES))]} {CATEGORIES[c]} item {i}"
        for i, c in enumerate(item_category)
    ]
    OUT.mkdir(exist_ok=True)
    for split, rows, start in (("train", 800, 0), ("test", 200, 800)):
        with (OUT / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([
                "user", "item", "category", "price", "age", "ts", "tags", "title", "click",
                "rating", "actions",
            ])  # fmt: skip
            for n in range(rows):
                u, i = rng.integers(users), rng.integers(items)
                c = item_category[i]
                logit = 1.5 * user_taste[u, c] - 0.4 * np.log(item_price[i]) + 0.5
                click = int(rng.random() < 1 / (1 + np.exp(-logit)))
                rating = int(np.clip(np.round(3 + user_taste[u, c] + rng.normal(0, 0.7)), 1, 5))
                price = "" if rng.random() < 0.05 else f"{item_price[i]:.2f}"
                on = [a for k, a in enumerate(ACTIONS) if extra.random() < 0.2 + 0.15 * k]
                # A clicked row without an action says so with "none" (an empty cell is missing).
                actions = ("|".join(on) or "none") if click else ""
                w.writerow([
                    f"u{u:03d}", int(item_id[i]), CATEGORIES[c], price, 20 + u % 50,
                    1_700_000_000 + 60 * (start + n), item_tags[i], item_title[i], click,
                    rating if click else "", actions,
                ])  # fmt: skip


if __name__ == "__main__":
    main()
