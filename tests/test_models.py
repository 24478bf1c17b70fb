"""Trunk structure, tower shapes and parameter-group labels."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtl_jax.data.schema import FeatureSpec
from mtl_jax.models import MMoE, MultiTaskModel, SharedBottom
from mtl_jax.models.layers import MLP, ExpertMLPs
from mtl_jax.optim import param_labels
from mtl_jax.tasks import TaskSpec


def test_experts_equal_independent_mlps():
    """The batched-einsum experts compute exactly what E separate MLPs would."""
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 7))
    experts = ExpertMLPs(num_experts=3, hidden=(6, 4))
    params = nn.meta.unbox(experts.init(jax.random.PRNGKey(1), x)["params"])
    out = experts.apply({"params": params}, x)
    assert out.shape == (5, 3, 4)
    for e in range(3):
        mlp_params = {
            f"dense_{i}": {"kernel": params[f"kernel_{i}"][e], "bias": params[f"bias_{i}"][e]}
            for i in range(2)
        }
        ref = MLP((6, 4)).apply({"params": mlp_params}, x)
        np.testing.assert_allclose(out[:, e], ref, rtol=1e-5, atol=1e-6)


def test_mmoe_with_one_expert_is_shared_bottom():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
    mmoe = MMoE(num_tasks=2, num_experts=1, hidden=(8, 5))
    params = nn.meta.unbox(mmoe.init(jax.random.PRNGKey(1), x)["params"])
    bottom = {
        "bottom": {
            f"dense_{i}": {
                "kernel": params["experts"][f"kernel_{i}"][0],
                "bias": params["experts"][f"bias_{i}"][0],
            }
            for i in range(2)
        }
    }
    ref = SharedBottom(num_tasks=2, hidden=(8, 5)).apply({"params": bottom}, x)
    for got, want in zip(mmoe.apply({"params": params}, x), ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_mmoe_gates_are_per_task_distributions():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
    mmoe = MMoE(num_tasks=3, num_experts=5, hidden=(8,))
    params = nn.meta.unbox(mmoe.init(jax.random.PRNGKey(1), x)["params"])
    _, state = mmoe.apply({"params": params}, x, mutable=["intermediates"])
    gates = state["intermediates"]["gate_weights"][0]
    assert gates.shape == (4, 3, 5)
    np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-6)
    assert not np.allclose(gates[:, 0], gates[:, 1]), "each task has its own gate"


def _model(trunk="mmoe", biases=None):
    config = ml_collections.ConfigDict(
        dict(
            trunk=trunk,
            embed_dim=4,
            pairwise_dots=True,
            num_experts=2,
            trunk_hidden=(8,),
            tower_hidden=(4,),
            dropout=0.0,
        )
    )
    features = (FeatureSpec("user_id", 10), FeatureSpec("item_id", 7))
    task_specs = (
        TaskSpec("click", "binary"),
        TaskSpec("rating", "regression"),
        TaskSpec("category", "multiclass", 3),
    )
    return MultiTaskModel(features, task_specs, config, biases)


@pytest.mark.parametrize("trunk", ["shared_bottom", "mmoe"])
def test_model_outputs_and_param_groups(trunk):
    biases = ((-2.0,), (3.5,), (0.1, 0.2, 0.3))
    model = _model(trunk, biases)
    feats = {"user_id": jnp.array([0, 9, 3]), "item_id": jnp.array([6, 0, 1])}
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), feats)["params"])
    out = model.apply({"params": params}, feats)
    assert out["click"].shape == (3,) and out["rating"].shape == (3,)
    assert out["category"].shape == (3, 3)
    np.testing.assert_allclose(params["towers_rating"]["out"]["bias"], [3.5])
    np.testing.assert_allclose(params["towers_category"]["out"]["bias"], [0.1, 0.2, 0.3])

    labels = param_labels(params)
    assert labels["embedding"] == {
        "user_id": {"embedding": "embeddings"},
        "item_id": {"embedding": "embeddings"},
    }
    assert set(jax.tree.leaves(labels["trunk"])) == {"trunk"}
    for task in ("click", "rating", "category"):
        assert set(jax.tree.leaves(labels[f"towers_{task}"])) == {"heads"}


def test_missing_feature_is_named():
    model = _model()
    with pytest.raises(KeyError, match=r"lacks input features \['item_id'\]"):
        model.init(jax.random.PRNGKey(0), {"user_id": jnp.array([0])})


def test_pairwise_dots_match_reference():
    from mtl_jax.models.embedding import FeatureEmbedding

    specs = (FeatureSpec("a", 5), FeatureSpec("b", 6), FeatureSpec("c", 7))
    feats = {"a": jnp.array([1, 4]), "b": jnp.array([0, 5]), "c": jnp.array([6, 2])}
    module = FeatureEmbedding(specs, embed_dim=3, pairwise_dots=True)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), feats)["params"])
    out = np.asarray(module.apply({"params": params}, feats))
    rows = [np.asarray(params[n]["embedding"])[np.asarray(feats[n])] for n in "abc"]
    dots = [np.sum(rows[i] * rows[j], axis=-1) for i, j in ((0, 1), (0, 2), (1, 2))]
    np.testing.assert_allclose(out, np.concatenate([*rows, np.stack(dots, -1)], -1), rtol=1e-6)


def test_a_bag_embeds_as_the_mean_of_its_valid_rows():
    from mtl_jax.models.embedding import FeatureEmbedding

    specs = (FeatureSpec("tags", 6, bag_size=3), FeatureSpec("a", 4))
    feats = {
        "tags": jnp.array([[1, 2, 0], [5, 0, 0], [0, 0, 0], [3, 3, 4]]),
        "tags/mask": jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], jnp.float32),
        "a": jnp.array([0, 1, 2, 3]),
    }
    module = FeatureEmbedding(specs, embed_dim=2, pairwise_dots=True)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), feats)["params"])
    out = np.asarray(module.apply({"params": params}, feats))
    table = np.asarray(params["tags"]["embedding"])
    bags = [table[[1, 2]].mean(0), table[5], np.zeros(2), table[[3, 3, 4]].mean(0)]
    rows_a = np.asarray(params["a"]["embedding"])[[0, 1, 2, 3]]
    dots = np.sum(np.stack(bags) * rows_a, -1, keepdims=True)
    np.testing.assert_allclose(out, np.concatenate([np.stack(bags), rows_a, dots], -1), rtol=1e-6)


def test_esmm_ctcvr_is_the_product_of_its_two_towers():
    from mtl_jax.models.model import product_logit
    from mtl_jax.tasks import predict

    config = ml_collections.ConfigDict(
        dict(trunk="mmoe", embed_dim=4, pairwise_dots=True, num_experts=2, trunk_hidden=(8,),
             tower_hidden=(4,), dropout=0.0, esmm_ctr_task="click",
             esmm_ctcvr_task="purchase")
    )  # fmt: skip
    features = (FeatureSpec("user_id", 10), FeatureSpec("item_id", 7))
    specs = (TaskSpec("click", "binary"), TaskSpec("purchase", "binary"))
    model = MultiTaskModel(features, specs, config, ((-1.0,), (-3.0,)))
    feats = {"user_id": jnp.array([0, 9, 3]), "item_id": jnp.array([6, 0, 1])}
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), feats)["params"])
    out, state = model.apply({"params": params}, feats, mutable=["intermediates"])
    cvr_logit = state["intermediates"]["cvr_logit"][0]
    p_ctr = jax.nn.sigmoid(out["click"])
    np.testing.assert_allclose(
        predict(specs[1], out["purchase"]), p_ctr * jax.nn.sigmoid(cvr_logit), rtol=1e-5
    )
    # The log-space product stays exact where naive products underflow or round to 1.
    a = jnp.array([-40.0, 0.0, 30.0])
    b = jnp.array([-40.0, 2.0, 30.0])
    p = np.exp(-np.logaddexp(0, -np.float64(a)) - np.logaddexp(0, -np.float64(b)))
    np.testing.assert_allclose(jax.nn.sigmoid(product_logit(a, b)), p, rtol=1e-5)
