"""Top-k ranking metrics and the MMR re-ranker against plain per-user Python loops."""

import itertools
import math

import numpy as np
import pytest

from mtl_jax import metrics


def _random_case(seed, users=30, items=40, k=10):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(users, items)).round(1)  # rounding makes ties
    exclude = rng.random((users, items)) < 0.3
    relevant = (rng.random((users, items)) < 0.15) & ~exclude
    relevant[0] = False  # a user without relevant items is left out of the averages
    genres = rng.random((items, 6)) < 0.3
    genres[3] = False  # an item without genres
    return scores, exclude, relevant, genres, k


def _loop_top_k(scores, exclude, k):
    out = []
    for row, ex in zip(scores, exclude, strict=True):
        candidates = [(-s, i) for i, s in enumerate(row) if not ex[i]]
        out.append([i for _, i in sorted(candidates)[:k]])
    return np.array(out)


def _jaccard(a, b):
    a, b = set(np.flatnonzero(a)), set(np.flatnonzero(b))
    return 1.0 if not (a | b) else len(a & b) / len(a | b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_metrics_match_loops(seed):
    scores, exclude, relevant, genres, k = _random_case(seed)
    ranked = metrics.top_k(scores, k, exclude)
    np.testing.assert_array_equal(ranked, _loop_top_k(scores, exclude, k))

    recalls, hits, ndcgs = [], [], []
    for user, items in enumerate(ranked):
        rel = set(np.flatnonzero(relevant[user]))
        if not rel:
            continue
        got = [i in rel for i in items]
        recalls.append(sum(got) / len(rel))
        hits.append(float(any(got)))
        dcg = sum(1 / math.log2(r + 2) for r, g in enumerate(got) if g)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
        ndcgs.append(dcg / idcg)
    assert metrics.recall_at_k(ranked, relevant) == pytest.approx(np.mean(recalls))
    assert metrics.hit_rate_at_k(ranked, relevant) == pytest.approx(np.mean(hits))
    assert metrics.ndcg_at_k(ranked, relevant) == pytest.approx(np.mean(ndcgs))

    assert metrics.catalogue_coverage(ranked, 40) == pytest.approx(
        len({i for row in ranked for i in row}) / 40
    )
    ild = np.mean(
        [
            np.mean([1 - _jaccard(genres[a], genres[b]) for a, b in itertools.combinations(row, 2)])
            for row in ranked
        ]
    )
    assert metrics.intra_list_diversity(ranked, genres) == pytest.approx(ild)

    counts = np.random.default_rng(seed).integers(0, 5, size=40)
    head = metrics.head_items(counts, 0.2)
    nonzero = [i for i in range(40) if counts[i] > 0]
    top = sorted(nonzero, key=lambda i: (-counts[i], i))[: math.ceil(0.2 * len(nonzero))]
    assert set(np.flatnonzero(head)) == set(top)
    tail = [i not in top for row in ranked for i in row]
    assert metrics.long_tail_share(ranked, head) == pytest.approx(np.mean(tail))


def test_perfect_ranking_scores_one():
    relevant = np.zeros((2, 20), bool)
    relevant[0, [3, 7]] = True
    relevant[1, [1]] = True
    ranked = np.array([[3, 7, 0], [1, 2, 0]])
    assert metrics.ndcg_at_k(ranked, relevant) == pytest.approx(1.0)
    assert metrics.recall_at_k(ranked, relevant) == pytest.approx(1.0)
    assert metrics.ndcg_at_k(ranked[:, ::-1], relevant) < 1.0


@pytest.mark.parametrize("lam", [1.0, 0.7, 0.3, 0.0])
def test_mmr_matches_greedy_loop(lam):
    scores, exclude, _, genres, k = _random_case(5)
    relevance = 1 / (1 + np.exp(-scores))
    sim = metrics.jaccard_similarity(genres)
    ranked = metrics.mmr_rerank(relevance, sim, k, lam, exclude)
    for user in range(len(scores)):
        picked = []
        for _ in range(k):
            best, best_gain = None, -np.inf
            for i in range(scores.shape[1]):
                if exclude[user, i] or i in picked:
                    continue
                penalty = max((_jaccard(genres[i], genres[j]) for j in picked), default=0.0)
                gain = lam * relevance[user, i] - (1 - lam) * penalty
                if gain > best_gain + 1e-12:
                    best, best_gain = i, gain
            picked.append(best)
        np.testing.assert_array_equal(ranked[user], picked)
    if lam == 1.0:
        np.testing.assert_array_equal(ranked, metrics.top_k(relevance, k, exclude))
    # Similarity rows on demand (what serving uses) pick the same items.
    lazy = metrics.mmr_rerank(relevance, metrics.jaccard_rows(genres), k, lam, exclude)
    np.testing.assert_array_equal(lazy, ranked)


def test_mmr_trades_relevance_for_diversity():
    scores, exclude, _, genres, k = _random_case(7, users=50, items=60)
    relevance = 1 / (1 + np.exp(-scores))
    sim = metrics.jaccard_similarity(genres)
    plain = metrics.mmr_rerank(relevance, sim, k, 1.0, exclude)
    diverse = metrics.mmr_rerank(relevance, sim, k, 0.3, exclude)
    assert metrics.intra_list_diversity(diverse, genres) > metrics.intra_list_diversity(
        plain, genres
    )
    rel_sum = lambda r: np.take_along_axis(relevance, r, axis=1).sum()
    assert rel_sum(diverse) < rel_sum(plain)


def test_ranking_input_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"relevant must be \(users, items\).*\(3, 4\)"):
        metrics.recall_at_k(np.zeros((2, 2), int), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="no user has a relevant item"):
        metrics.ndcg_at_k(np.zeros((2, 2), int), np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="lambda must lie in"):
        metrics.mmr_rerank(np.zeros((1, 3)), np.zeros((3, 3)), 2, 1.5)
    with pytest.raises(ValueError, match=r"similarity must be \(3, 3\)"):
        metrics.mmr_rerank(np.zeros((1, 3)), np.zeros((2, 2)), 2, 0.5)


def _tiny_ranking_dataset(seed=0, users=12, items=30):
    from mtl_jax.data.schema import Catalogue, FeatureSpec, MultiTaskDataset, Split
    from mtl_jax.tasks import TaskSpec

    rng = np.random.default_rng(seed)
    pairs = [(u, i) for u in range(1, users) for i in range(1, items) if rng.random() < 0.3]
    pairs = np.array(pairs)
    part = rng.integers(0, 3, size=len(pairs))  # 0 train, 1 validation, 2 test

    def split(p):
        u, i = pairs[part == p].T
        like = rng.integers(0, 2, size=len(u)).astype(np.float32)
        return Split(
            {"user_id": u.astype(np.int32), "item_id": i.astype(np.int32)},
            {"like": like, "rating": like * 2 + 2},
            {"like": np.ones_like(like), "rating": np.ones_like(like)},
        )

    catalogue = Catalogue(
        user_features={"user_id": np.arange(users, dtype=np.int32)},
        item_features={"item_id": np.arange(items, dtype=np.int32)},
        items=np.arange(1, items),  # id 0 is not an item
        item_attributes=rng.random((items, 4)) < 0.4,
    )
    tasks = (TaskSpec("rating", "regression"), TaskSpec("like", "binary"))
    specs = (FeatureSpec("user_id", users), FeatureSpec("item_id", items))
    ds = MultiTaskDataset("tiny", specs, tasks, split(0), split(1), split(2), catalogue=catalogue)
    return ds, rng.random((users, items)), rng.normal(size=(users, items))


def test_evaluate_ranking_matches_brute_force():
    from mtl_jax import ranking

    ds, like_table, rating_table = _tiny_ranking_dataset()

    def predict(split):
        u, i = split.features["user_id"], split.features["item_id"]
        return {"like": like_table[u, i], "rating": rating_table[u, i]}

    c = ranking.default_config(["rating", "like"])
    c.update(enabled=True, relevance_task="like", k=3, mmr_lambdas=(1.0,))
    c.fusion.update(like=1.0, rating=0.5)
    assert ranking.check_config(c, ds.tasks) == []
    got = ranking.evaluate_ranking(predict, ds, c)["mmr_lambda=1"]

    score = like_table + 0.5 * rating_table
    seen = {
        (u, i) for s in (ds.train, ds.validation) for u, i in zip(*s.features.values(), strict=True)
    }
    t = ds.test
    rel = {}
    for u, i, y in zip(t.features["user_id"], t.features["item_id"], t.labels["like"], strict=True):
        if y:
            rel.setdefault(int(u), set()).add(int(i))
    recalls, lists = [], []
    for u, liked in sorted(rel.items()):
        candidates = sorted(
            (i for i in range(1, 30) if (u, i) not in seen), key=lambda i: -score[u, i]
        )
        top = candidates[:3]
        lists.append(top)
        recalls.append(len(liked & set(top)) / len(liked))
    assert got["recall@3"] == pytest.approx(np.mean(recalls))
    assert got["coverage@3"] == pytest.approx(len({i for top in lists for i in top}) / 29)


def test_ranking_config_errors_name_the_problem():
    from mtl_jax import ranking
    from mtl_jax.tasks import TaskSpec

    tasks = [TaskSpec("rating", "regression"), TaskSpec("genre", "multilabel", num_classes=3)]
    c = ranking.default_config(["rating", "genre"])
    c.update(enabled=True, relevance_task="rating")
    c.fusion.genre = 1.0
    problems = " | ".join(ranking.check_config(c, tasks))
    assert "relevance_task 'rating' must be a binary task" in problems
    assert "fusion.genre: a multilabel task cannot score items" in problems


def test_ndcg_caps_the_ideal_at_k_when_more_items_are_relevant():
    """A user with more relevant items than k: the ideal DCG has k hits, so a top k of only
    relevant items scores 1, whatever the other relevant items."""
    k, items = 3, 12
    relevant = np.zeros((3, items), bool)
    relevant[0, :8] = True  # 8 relevant > k
    relevant[1, [0, 5, 6, 7, 9]] = True
    relevant[2, [2]] = True
    ranked = np.array([[5, 0, 7], [0, 1, 5], [4, 2, 3]])
    discounts = [1 / math.log2(r + 2) for r in range(k)]
    ideal = [sum(discounts[: min(n, k)]) for n in relevant.sum(axis=1)]
    dcg = [sum(d for d, i in zip(discounts, row, strict=True) if relevant[u, i])
           for u, row in enumerate(ranked)]  # fmt: skip
    expected = np.mean([a / b for a, b in zip(dcg, ideal, strict=True)])
    assert metrics.ndcg_at_k(ranked, relevant) == pytest.approx(expected)
    assert metrics.ndcg_at_k(ranked[:1], relevant[:1]) == pytest.approx(1.0)  # all 3 relevant
    assert expected < 1.0
