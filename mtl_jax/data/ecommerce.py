"""A deterministic e-commerce impression simulator with a click -> purchase -> rating funnel.

Why a simulator: it knows the true probability behind every label, so a report can put the
oracle's AUC next to the model's and say how far from the achievable limit training got.

Generative story (all drawn from one seed):
  * users have an age bucket, gender and region; items a category, brand and price bucket,
    and a Zipf popularity rank that decides how often they are shown (the long tail);
  * each task ``t`` in (click, purchase, rating) scores a (user, item) pair with a bilinear
    form of latent vectors built from the observable features plus per-id noise (small for
    users, who have ~40 impressions each, larger for items, which have many); the
    purchase and rating latents mix the click latent with an independent one,
    ``z_t = rho * z_click + sqrt(1 - rho^2) * z_t_own``, so ``task_correlation = rho``
    sets how related the tasks are;
  * click ~ Bernoulli(sigmoid(z_click + bias)), purchase only after a click, and a 1-5
    rating only for purchases, so the purchase and rating labels are missing by design;
  * the item's category is an attribute-prediction task, withheld from the inputs.
"""

from __future__ import annotations

import math

import numpy as np

from mtl_jax.data.schema import (
    Catalogue,
    FeatureSpec,
    MultiTaskDataset,
    Split,
    hold_out_items,
    random_split,
)
from mtl_jax.data.simulation import calibrate_bias as _calibrate_bias
from mtl_jax.data.simulation import sigmoid as _sigmoid
from mtl_jax.data.simulation import standardize as _standardize
from mtl_jax.tasks import TaskSpec

CATEGORY_WORDS = (
    "sneakers", "laptop", "headphones", "jacket", "watch", "backpack", "camera", "blender",
    "lamp", "novel", "perfume", "tent", "guitar", "phone", "sofa", "kettle", "helmet", "desk",
    "scarf", "drone", "printer", "mattress", "bicycle", "puzzle", "teapot", "monitor",
    "sunglasses", "vacuum", "yoga mat", "speaker",
)  # fmt: skip
ADJECTIVES = ("classic", "compact", "premium", "eco", "smart", "vintage", "sport", "deluxe")
_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "zu", "pel", "dax", "qui", "no", "bri")


def _brand_names(n: int, rng: np.random.Generator) -> list[str]:
    names = []
    for i in range(n):
        k = 2 + (i % 2)
        names.append("".join(rng.choice(_SYLLABLES, size=k)).capitalize() + f"{i}")
    return names


_erf = np.frompyfunc(math.erf, 1, 1)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def expected_rounded_rating(mean: np.ndarray, noise_std: float) -> np.ndarray:
    """E[clip(round(mean + noise), 1, 5)] for Gaussian noise: the rating oracle."""
    # P(rating <= k) = P(mean + noise < k + 0.5) for k = 1..4; rating 5 takes the rest.
    cdf = np.stack([_normal_cdf((k + 0.5 - mean) / noise_std) for k in range(1, 5)], axis=0)
    probs = np.diff(
        np.concatenate([np.zeros_like(mean)[None], cdf, np.ones_like(mean)[None]]), axis=0
    )
    return (np.arange(1, 6)[:, None] * probs).sum(axis=0)


def simulate_ecommerce(
    *,
    num_users: int = 5000,
    num_items: int = 2000,
    num_impressions: int = 200_000,
    num_categories: int = 20,
    num_brands: int = 100,
    num_age_buckets: int = 7,
    num_regions: int = 10,
    num_price_buckets: int = 5,
    latent_dim: int = 8,
    task_correlation: float = 0.5,
    zipf_exponent: float = 1.0,
    click_rate: float = 0.07,
    purchase_given_click: float = 0.15,
    signal_scale: float = 2.0,
    user_id_noise: float = 0.2,
    item_id_noise: float = 0.5,
    rating_noise: float = 0.6,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    cold_item_fraction: float = 0.0,
    seed: int = 0,
) -> MultiTaskDataset:
    """Simulates impressions with click, purchase, rating and category labels.

    Returns a ``MultiTaskDataset`` whose splits carry ``oracle`` columns: the true click and
    purchase probabilities and the expected rating of every impression. Task ``cvr`` is
    purchase given click, labelled on clicked impressions only (a conventional CVR model's
    training data); its oracle is P(purchase | click) on every impression, so a CVR model
    can be judged on the entire space, as ESMM (Ma et al. 2018) argues it must be.

    Cold start: with ``cold_item_fraction`` > 0, that fraction of the items (drawn with
    ``seed``) appears only in test and as many only in validation
    (``schema.hold_out_items``); ``test_subsets`` / ``validation_subsets`` name the rows of
    cold and warm items. There the category task is a real question: an unseen item's
    category from its brand, price and title, not from an id seen in training.
    """
    if not -1.0 <= task_correlation <= 1.0:
        raise ValueError(f"task_correlation must lie in [-1, 1], got {task_correlation}")
    if num_categories > len(CATEGORY_WORDS):
        raise ValueError(f"num_categories must be <= {len(CATEGORY_WORDS)}, got {num_categories}")
    rng = np.random.default_rng(seed)
    k = latent_dim

    # --- users and items with observable features -------------------------------------
    user_age = rng.integers(num_age_buckets, size=num_users)
    user_gender = rng.integers(2, size=num_users)
    user_region = rng.integers(num_regions, size=num_users)
    brand_home_category = rng.integers(num_categories, size=num_brands)
    item_brand = rng.integers(num_brands, size=num_items)
    # Brands mostly sell in their home category, so brand says something about category.
    item_category = np.where(
        rng.random(num_items) < 0.7,
        brand_home_category[item_brand],
        rng.integers(num_categories, size=num_items),
    )
    item_price = np.clip(
        (item_category % num_price_buckets + rng.integers(-1, 2, size=num_items)),
        0,
        num_price_buckets - 1,
    )
    popularity_rank = rng.permutation(num_items)  # rank 0 is the most shown item
    brand_words = _brand_names(num_brands, rng)
    item_text = tuple(
        f"{brand_words[item_brand[i]]} {ADJECTIVES[rng.integers(len(ADJECTIVES))]} "
        f"{CATEGORY_WORDS[item_category[i]]}"
        for i in range(num_items)
    )

    def latent_pair() -> tuple[np.ndarray, np.ndarray]:
        """User and item latent vectors for one task: feature effects plus per-id noise."""
        scale = 1.0 / math.sqrt(k)
        user = (
            rng.normal(0, scale, (num_age_buckets, k))[user_age]
            + rng.normal(0, scale, (2, k))[user_gender]
            + 0.7 * rng.normal(0, scale, (num_regions, k))[user_region]
            + user_id_noise * rng.normal(0, scale, (num_users, k))
        )
        item = (
            rng.normal(0, scale, (num_categories, k))[item_category]
            + 0.5 * rng.normal(0, scale, (num_brands, k))[item_brand]
            + 0.5 * rng.normal(0, scale, (num_price_buckets, k))[item_price]
            + item_id_noise * rng.normal(0, scale, (num_items, k))
        )
        return user, item

    latents = {t: latent_pair() for t in ("click", "purchase", "rating")}
    item_quality = rng.normal(0, 0.5, num_items)

    # --- impressions: uniform users, Zipf items ------------------------------------------
    item_weight = 1.0 / np.power(popularity_rank + 1.0, zipf_exponent)
    user = rng.integers(num_users, size=num_impressions)
    item = rng.choice(num_items, size=num_impressions, p=item_weight / item_weight.sum())

    def task_score(name: str) -> np.ndarray:
        u, v = latents[name]
        return _standardize(np.einsum("nk,nk->n", u[user], v[item]))

    rho = task_correlation
    own = math.sqrt(max(0.0, 1.0 - rho * rho))
    z_click = task_score("click")
    z_purchase = rho * z_click + own * task_score("purchase")
    z_rating = rho * z_click + own * task_score("rating")

    quality = item_quality[item]
    click_logit = signal_scale * z_click + quality
    click_logit += _calibrate_bias(click_logit, click_rate)
    p_click = _sigmoid(click_logit)
    cvr_logit = signal_scale * z_purchase + quality
    # Calibrated over clicks (weights p_click): clicked impressions skew to high z_click and,
    # through task_correlation, to high purchase scores.
    cvr_logit += _calibrate_bias(cvr_logit, purchase_given_click, weights=p_click)
    p_cvr = _sigmoid(cvr_logit)

    click = rng.random(num_impressions) < p_click
    purchase = click & (rng.random(num_impressions) < p_cvr)
    rating_mean = 3.6 + 0.9 * z_rating + 0.5 * quality
    rating = np.clip(np.round(rating_mean + rng.normal(0, rating_noise, num_impressions)), 1, 5)

    features = {
        "user_id": user,
        "age": user_age[user],
        "gender": user_gender[user],
        "region": user_region[user],
        "item_id": item,
        "brand": item_brand[item],
        "price": item_price[item],
        "category": item_category[item],
    }
    features = {name: col.astype(np.int32) for name, col in features.items()}
    ones = np.ones(num_impressions, np.float32)
    labels = {
        "click": click.astype(np.float32),
        "purchase": purchase.astype(np.float32),
        "cvr": purchase.astype(np.float32),
        "rating": np.where(purchase, rating, 0.0).astype(np.float32),
        "category": item_category[item].astype(np.int32),
    }
    masks = {
        "click": ones,
        "purchase": ones,  # a non-click is a non-purchase: labelled on every impression
        # Purchase given click, the naive CVR task: labelled on clicked impressions only.
        "cvr": click.astype(np.float32),
        "rating": purchase.astype(np.float32),
        "category": ones,
    }
    oracle = {
        "click": p_click.astype(np.float32),
        "purchase": (p_click * p_cvr).astype(np.float32),
        # P(purchase | click) of every impression, clicked or not: the entire-space CVR.
        "cvr": p_cvr.astype(np.float32),
        "rating": expected_rounded_rating(rating_mean, rating_noise).astype(np.float32),
    }
    everything = Split(features, labels, masks, oracle)
    train, val, test = random_split(num_impressions, val_fraction, test_fraction, rng)
    subsets, val_subsets = {}, {}
    if cold_item_fraction > 0:
        train, val, test, subsets, val_subsets = hold_out_items(
            item, train, val, test, cold_item_fraction, seed
        )

    feature_specs = (
        FeatureSpec("user_id", num_users),
        FeatureSpec("age", num_age_buckets),
        FeatureSpec("gender", 2),
        FeatureSpec("region", num_regions),
        FeatureSpec("item_id", num_items),
        FeatureSpec("brand", num_brands),
        FeatureSpec("price", num_price_buckets),
        FeatureSpec("category", num_categories),
    )
    tasks = (
        TaskSpec("click", "binary"),
        TaskSpec("purchase", "binary"),
        TaskSpec("cvr", "binary"),
        TaskSpec("rating", "regression"),
        TaskSpec("category", "multiclass", num_classes=num_categories),
    )
    users, items = np.arange(num_users, dtype=np.int32), np.arange(num_items, dtype=np.int32)
    catalogue = Catalogue(  # every (user, item) pair scorable: serving ranks over it
        user_features={
            "user_id": users, "age": user_age.astype(np.int32),
            "gender": user_gender.astype(np.int32), "region": user_region.astype(np.int32),
        },
        item_features={
            "item_id": items, "brand": item_brand.astype(np.int32),
            "price": item_price.astype(np.int32), "category": item_category.astype(np.int32),
        },
        items=items,
        item_attributes=np.eye(num_categories, dtype=bool)[item_category],
    )  # fmt: skip
    return MultiTaskDataset(
        name="ecommerce",
        features=feature_specs,
        tasks=tasks,
        train=everything.take(train),
        validation=everything.take(val),
        test=everything.take(test),
        item_text=item_text,
        catalogue=catalogue,
        test_subsets=subsets,
        validation_subsets=val_subsets,
    )
