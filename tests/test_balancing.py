"""Balancing methods against hand-worked examples from the papers and independent references."""

import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

from mtl_jax import balancing
from mtl_jax.balancing import solvers


def combine(name, grads, losses=None, steps=1, **kwargs):
    """Runs the transform ``steps`` times on the same (T, d) matrix; returns update, state."""
    grads = jnp.asarray(grads, jnp.float32)
    tx = balancing.make(name, grads.shape[0], **kwargs)
    state = tx.init(grads[0])  # params-shaped template (DB-MTL keeps per-parameter state)
    for _ in range(steps):
        update, state = tx.update(grads, state, task_losses=losses)
    return np.asarray(update), state


def random_grads(seed, t, d=7, conflict=True):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(t, d))
    if not conflict:
        g = np.abs(g)  # all pairwise inner products positive
    return g.astype(np.float32)


# --- hand-worked examples -------------------------------------------------------------------


def test_pcgrad_two_conflicting_vectors():
    # g1.g2 = -1 < 0: g1 -> g1 - (-1/2) g2 = (0.5, 0.5); g2 -> g2 - (-1/1) g1 = (0, 1).
    update, _ = combine("pcgrad", [[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(update, [0.5, 1.5], atol=1e-6)
    # No conflict: the plain sum.
    update, _ = combine("pcgrad", [[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(update, [2.0, 1.0], atol=1e-6)


def _pcgrad_reference(g, orders):
    """The paper's Algorithm 1 with explicit vectors, given each task's order over others."""
    out = []
    for i, order in enumerate(orders):
        gi = g[i].copy()
        for j in order:
            if j != i and gi @ g[j] < 0:
                gi = gi - (gi @ g[j]) / (g[j] @ g[j]) * g[j]
        out.append(gi)
    return np.sum(out, axis=0)


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_matches_reference_for_some_task_order(seed):
    g = random_grads(seed, 3)
    update, _ = combine("pcgrad", g, seed=seed)
    perms = list(itertools.permutations(range(3)))
    candidates = [_pcgrad_reference(g, orders) for orders in itertools.product(perms, repeat=3)]
    assert min(np.abs(c - update).max() for c in candidates) < 1e-4


def test_mgda_two_tasks_closed_form():
    for seed in range(5):
        g1, g2 = random_grads(seed, 2)
        gamma = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
        update, _ = combine("mgda", [g1, g2])
        np.testing.assert_allclose(update, gamma * g1 + (1 - gamma) * g2, atol=1e-4)


def _slsqp(objective, x0, constraints, bounds=None, jac=None):
    """An independent reference solve with scipy's SLSQP at tight tolerance."""
    res = optimize.minimize(
        objective,
        x0,
        jac=jac,
        bounds=bounds,
        constraints=constraints,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return res.x


def _simplex_reference(objective, t):
    simplex = ({"type": "eq", "fun": lambda w: w.sum() - 1.0},)
    return _slsqp(objective, np.full(t, 1.0 / t), simplex, bounds=[(0, 1)] * t)


@pytest.mark.parametrize("seed", range(4))
def test_mgda_matches_scipy_min_norm(seed):
    """To 1e-5 of the update's norm. (Where the first-order solver alone stops short, on
    an ill-conditioned Gramian with one small weight, its Newton polish on the support
    finishes the job: tests/test_train.py's scoped MGDA reference failed without it.)"""
    g = random_grads(seed, 4, d=6).astype(np.float64)
    gram = g @ g.T
    w = _simplex_reference(lambda w: w @ gram @ w, 4)
    update, _ = combine("mgda", g)
    np.testing.assert_allclose(update, w @ g, atol=1e-5 * np.linalg.norm(w @ g))


def test_cagrad_with_c_zero_is_the_mean():
    g = random_grads(0, 3)
    update, _ = combine("cagrad", g, c=0.0)
    np.testing.assert_allclose(update, g.mean(0), atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_cagrad_matches_reference_objective(seed):
    """The paper's code: scipy SLSQP on the dual, then (g0 + c||g0|| g_w/||g_w||) / (1 + c^2)."""
    c = 0.4
    g = random_grads(seed, 3, d=5).astype(np.float64)
    gram = g @ g.T
    g0_norm = np.sqrt(gram.mean())
    b = np.full(3, 1 / 3)
    w = _simplex_reference(lambda w: w @ gram @ b + c * g0_norm * np.sqrt(w @ gram @ w + 1e-8), 3)
    gw = w @ g
    expected = (g.mean(0) + c * g0_norm / np.linalg.norm(gw) * gw) / (1 + c * c)
    update, _ = combine("cagrad", g, c=c)
    np.testing.assert_allclose(update, expected, atol=2e-3 * np.linalg.norm(expected))


@pytest.mark.parametrize("seed", range(4))
def test_nash_mtl_solves_bargaining_equation(seed):
    g = random_grads(seed, 4, d=9)
    gram = (g @ g.T).astype(np.float64)
    gram_n = gram / np.linalg.norm(gram)
    _, state = combine("nash_mtl", g)
    alpha = np.asarray(state.weights, np.float64)
    assert np.all(alpha > 0)
    np.testing.assert_allclose(alpha * (gram_n @ alpha), 1.0, rtol=1e-3)


def _dual_cone_projection(g, v):
    """argmin_x ||x - v||^2 subject to g x >= 0, with scipy (an independent QP solve)."""
    cone = ({"type": "ineq", "fun": lambda x: g @ x, "jac": lambda x: g},)
    return _slsqp(lambda x: ((x - v) ** 2).sum(), v, cone, jac=lambda x: 2 * (x - v))


@pytest.mark.parametrize("seed", range(4))
def test_upgrad_is_mean_of_dual_cone_projections(seed):
    g = random_grads(seed, 3, d=5).astype(np.float64)
    expected = np.mean([_dual_cone_projection(g, gi) for gi in g], axis=0)
    update, _ = combine("upgrad", g)
    np.testing.assert_allclose(update, expected, atol=1e-3 * np.linalg.norm(expected))
    assert np.all(g @ update >= -1e-5), "the update lies in the dual cone"


def test_upgrad_without_conflict_is_the_mean():
    g = random_grads(1, 4, conflict=False)
    update, _ = combine("upgrad", g)
    np.testing.assert_allclose(update, g.mean(0), atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_imtl_g_equal_projections_on_unit_gradients(seed):
    g = random_grads(seed, 4, d=8)
    update, state = combine("imtl_g", g)
    units = g / np.linalg.norm(g, axis=1, keepdims=True)
    projections = units @ update
    np.testing.assert_allclose(projections, projections[0], rtol=1e-3)
    assert float(np.sum(state.weights)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_aligned_mtl_matches_numpy_reference(seed):
    g = random_grads(seed, 3, d=6).astype(np.float64)
    lam, v = np.linalg.eigh(g @ g.T)
    sigma = np.sqrt(lam)
    b = sigma.min() * v @ np.diag(1 / sigma) @ v.T
    aligned = b @ g
    # Aligned gradients are orthogonal with equal norms sigma_min (condition number 1).
    np.testing.assert_allclose(aligned @ aligned.T, sigma.min() ** 2 * np.eye(3), atol=1e-8)
    update, _ = combine("aligned_mtl", g)
    np.testing.assert_allclose(update, aligned.sum(0), rtol=1e-3, atol=1e-4)


def test_gradvac_first_step_with_zero_targets_is_pcgrad_and_targets_move():
    g = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32)
    update, state = combine("gradvac", g, beta=0.5)
    np.testing.assert_allclose(update, [0.5, 1.5], atol=1e-5)
    cos = -1 / np.sqrt(2)
    # Each target moved halfway from 0 to the cosine observed before that task's adjustment.
    np.testing.assert_allclose(np.asarray(state.inner)[0, 1], 0.5 * cos, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.inner)[1, 0], 0.5 * cos, atol=1e-5)


def test_dwa_on_recorded_losses():
    losses = [[1.0, 2.0], [0.8, 1.9], [0.6, 1.5], [0.5, 1.4]]
    tx = balancing.make("dwa", 2, temperature=2.0, period=1)
    state = tx.init(None)
    seen = []
    for step_losses in losses:
        _, state = tx.update(jnp.eye(2), state, task_losses=jnp.array(step_losses))
        seen.append(np.asarray(state.weights))
    np.testing.assert_allclose(seen[0], [1, 1])
    np.testing.assert_allclose(seen[1], [1, 1])

    def paper(l1, l2):
        r = np.array(l1) / np.array(l2)
        return 2 * np.exp(r / 2) / np.exp(r / 2).sum()

    np.testing.assert_allclose(seen[2], paper(losses[1], losses[0]), rtol=1e-5)
    np.testing.assert_allclose(seen[3], paper(losses[2], losses[1]), rtol=1e-5)


def test_famo_on_recorded_losses_matches_numpy_reference():
    losses = np.array([[1.0, 3.0], [0.7, 2.9], [0.6, 2.5], [0.55, 2.45], [0.5, 2.3]])
    lr, gamma = 0.025, 1e-3
    logits, m, v, prev, expected = np.zeros(2), np.zeros(2), np.zeros(2), None, []
    for k, loss in enumerate(losses):
        if prev is not None:
            z = np.exp(logits) / np.exp(logits).sum()
            delta = np.log(prev + 1e-8) - np.log(loss + 1e-8)
            grad = z * delta - z * (z @ delta) + gamma * logits  # torch Adam's L2 weight decay
            t = k  # Adam step count
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            logits = logits - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        z = np.exp(logits) / np.exp(logits).sum()
        w = z / (loss + 1e-8)
        expected.append(w / w.sum())
        prev = loss
    tx = balancing.make("famo", 2)
    state = tx.init(None)
    for loss, want in zip(losses, expected, strict=True):
        _, state = tx.update(jnp.eye(2), state, task_losses=jnp.asarray(loss))
        np.testing.assert_allclose(np.asarray(state.weights), want, rtol=1e-5)


def _learned_weights_on_fixed_losses(name, steps=3000):
    """First weights, last weights and state of a rule that learns its weights (at rate
    0.05), fed the task losses (0.5, 4.0) at every step."""
    rule = balancing.make_rule(name, learning_rate=0.05)
    step = jax.jit(lambda s: balancing.compute_weights(rule, s, jnp.array([0.5, 4.0]), None))
    first, state = step(balancing.init_state(rule, 2))
    w = first
    for _ in range(steps):
        w, state = step(state)
    return first, w, state


def test_uw_learns_log_loss_and_starts_at_one_half():
    w, _, state = _learned_weights_on_fixed_losses("uw")
    np.testing.assert_allclose(w, [0.5, 0.5])
    # Stationary point of exp(-s) L / 2 + s / 2 is s = log L, i.e. weight 1 / (2 L).
    np.testing.assert_allclose(np.asarray(state.inner.values), np.log([0.5, 4.0]), atol=1e-2)


def test_rlw_is_reproducible_and_random():
    g = np.eye(3, dtype=np.float32)
    _, a = combine("rlw", g, steps=2, seed=7)
    _, b = combine("rlw", g, steps=2, seed=7)
    _, c = combine("rlw", g, steps=3, seed=7)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert not np.allclose(a.weights, c.weights)
    assert float(a.weights.sum()) == pytest.approx(1.0) and np.all(a.weights > 0)


# --- properties over random task-gradient matrices -------------------------------------------

ALL = balancing.names()
STATEFUL_KWARGS = {"static": {"weights": [1.0, 2.0, 0.5, 1.0]}}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", range(3))
def test_every_method_is_finite_and_jittable(name, seed):
    g = jnp.asarray(random_grads(seed, 4, d=11))
    losses = jnp.asarray(np.random.default_rng(seed).uniform(0.1, 2.0, 4), jnp.float32)
    tx = balancing.make(name, 4, **STATEFUL_KWARGS.get(name, {}))
    update_fn = jax.jit(lambda g, s, losses: tx.update(g, s, task_losses=losses))
    state = tx.init(g[0])
    for _ in range(3):
        update, state = update_fn(g, state, losses)
        assert np.all(np.isfinite(update)) and np.all(np.isfinite(state.weights))


@pytest.mark.parametrize("name", ["mgda", "upgrad", "nash_mtl"])
@pytest.mark.parametrize("seed", range(5))
def test_every_task_loss_decreases_to_first_order(name, seed):
    """These methods guarantee <g_k, d> >= 0 for every task k (so -d descends every loss)."""
    g = random_grads(seed, 4, d=12)
    update, _ = combine(name, g)
    assert np.all(g @ update >= -1e-4 * np.linalg.norm(update) * np.linalg.norm(g, axis=1))


@pytest.mark.parametrize("name", ["mgda", "upgrad", "nash_mtl", "imtl_g", "aligned_mtl", "cagrad"])
def test_task_permutation_equivariance(name):
    g = random_grads(3, 4)
    perm = np.array([2, 0, 3, 1])
    a, _ = combine(name, g)
    b, _ = combine(name, g[perm])
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "cagrad", "pcgrad", "imtl_g"])
def test_scale_equivariance(name):
    """Scaling every gradient by s scales these methods' update by s."""
    g = random_grads(4, 3)
    a, _ = combine(name, g)
    b, _ = combine(name, 10.0 * g)
    np.testing.assert_allclose(b, 10.0 * a, rtol=2e-3, atol=1e-4)


# --- the contract ----------------------------------------------------------------------------


def test_composes_with_optax_on_pytrees():
    grads = {"a": jnp.asarray(random_grads(0, 3, d=4)), "b": {"c": jnp.ones((3, 2, 2))}}
    tx = optax.chain(balancing.make("pcgrad", 3), optax.sgd(1.0))
    state = tx.init(None)
    update, _ = tx.update(grads, state, task_losses=jnp.ones(3))
    rule = balancing.make_rule("pcgrad")
    weights, _ = balancing.compute_weights(
        rule, balancing.init_state(rule, 3), None, balancing.gramian(grads)
    )
    expected = balancing.weighted_sum(grads, weights)
    np.testing.assert_allclose(update["a"], -expected["a"], rtol=1e-6)
    assert update["b"]["c"].shape == (2, 2)


def test_gramian_sums_over_leaves():
    a, b = random_grads(0, 3, d=4), random_grads(1, 3, d=6)
    tree = {"a": jnp.asarray(a), "b": jnp.asarray(b.reshape(3, 2, 3))}
    np.testing.assert_allclose(balancing.gramian(tree), a @ a.T + b @ b.T, rtol=1e-5)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"unknown balancing method 'pcgard'; valid: \("):
        balancing.make("pcgard", 2)
    with pytest.raises(ValueError, match=r"'cagrad' takes \['c', 'iterations', 'rescale'\]"):
        balancing.make("cagrad", 2, alpha=0.5)
    tx = balancing.make("mgda", 3)
    with pytest.raises(ValueError, match="3 tasks on their leading axis, but .* num_tasks=2"):
        balancing.make("mgda", 2).update(jnp.ones((3, 4)), tx.init(None))
    with pytest.raises(ValueError, match="needs task_losses"):
        balancing.make("famo", 2).update(jnp.ones((2, 4)), balancing.make("famo", 2).init(None))


def test_simplex_projection_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(size=5) * 3
        w = np.asarray(solvers.project_to_simplex(jnp.asarray(v)))
        ref = _simplex_reference(lambda x, v=v: ((x - v) ** 2).sum(), 5)
        np.testing.assert_allclose(w, ref, atol=1e-5)


def test_routed_per_parameter_group_with_optax_partition():
    """The shared trunk gets the combiner, other groups the plain sum, in one optax.partition."""
    rng = np.random.default_rng(0)
    grads = {
        "trunk": {"w": jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32)},
        "embedding": {"table": jnp.asarray(rng.normal(size=(3, 5, 2)), jnp.float32)},
    }
    labels = {"trunk": {"w": "shared"}, "embedding": {"table": "other"}}
    tx = optax.partition(
        {"shared": balancing.make("upgrad", 3), "other": balancing.task_sum()}, labels
    )
    params = jax.tree.map(lambda g: g[0], grads)
    update, _ = tx.update(grads, tx.init(params), params, task_losses=jnp.ones(3))
    alone, _ = combine("upgrad", np.asarray(grads["trunk"]["w"]).reshape(3, -1))
    np.testing.assert_allclose(np.asarray(update["trunk"]["w"]).reshape(-1), alone, rtol=1e-5)
    np.testing.assert_allclose(update["embedding"]["table"], grads["embedding"]["table"].sum(0))


def test_config_section_routes_kwargs():
    from mtl_jax.balancing import config as balancing_config

    c = balancing_config.default_config(["a", "b"], method="cagrad")
    c.c = 0.0
    rule = balancing_config.rule_from_config(c, ["a", "b"])
    w, _ = balancing.compute_weights(rule, balancing.init_state(rule, 2), None, jnp.eye(2))
    np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-6)  # c = 0 reached the rule
    c.method = "pcgrad"
    with pytest.raises(
        ValueError, match=r"balancing.c is set, but method 'pcgrad' takes no kwargs"
    ):
        balancing_config.rule_from_config(c, ["a", "b"])
    c = balancing_config.default_config(["a", "b"], method="static")
    c.weights.a = 3.0
    rule = balancing_config.rule_from_config(c, ["a", "b"])
    w, _ = balancing.compute_weights(rule, balancing.init_state(rule, 2), None, None)
    np.testing.assert_allclose(w, [3.0, 1.0])


@pytest.mark.parametrize("seed", range(3))
def test_imtl_g_matches_explicit_vector_reference(seed):
    """The paper's closed form with explicit D and U matrices (as in its released code)."""
    g = random_grads(seed, 4, d=8).astype(np.float64)
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    d_mat, u_mat = g[0] - g[1:], u[0] - u[1:]
    rest = g[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    alpha = np.concatenate([[1 - rest.sum()], rest])
    update, _ = combine("imtl_g", g)
    np.testing.assert_allclose(update, alpha @ g, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_nash_mtl_matches_scipy_root(seed):
    """An independent solve of G alpha = 1/alpha (scipy's root finder from a positive start)."""
    g = random_grads(seed, 3, d=6).astype(np.float64)
    gram = g @ g.T
    gram /= np.linalg.norm(gram)
    sol = optimize.root(lambda a: gram @ a - 1 / a, np.ones(3), tol=1e-12)
    assert sol.success and np.all(sol.x > 0)
    update, _ = combine("nash_mtl", g)
    np.testing.assert_allclose(update, sol.x @ g, rtol=1e-3)


def test_gradnorm_moves_weight_toward_the_task_with_the_smaller_gradient():
    """Two tasks with equal loss ratios but gradient norms 1 and 4: GradNorm's targets are the
    mean weighted norm, so the weak task's weight rises, the strong one's falls, and the sum
    stays T; at balance w_1 ||g_1|| = w_2 ||g_2||."""
    rule = balancing.make_rule("gradnorm", alpha=1.5, learning_rate=0.01)
    state = balancing.init_state(rule, 2)
    gram = jnp.diag(jnp.array([1.0, 16.0]))
    step = jax.jit(lambda s: balancing.compute_weights(rule, s, jnp.array([1.0, 1.0]), gram))
    for _ in range(400):
        _, state = step(state)
    w = np.asarray(state.inner.weights)
    assert w.sum() == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_allclose(w * [1.0, 4.0], (w * [1.0, 4.0]).mean(), rtol=0.05)


def test_db_mtl_matches_numpy_reference_on_a_sequence():
    """The authors' update: EMA of log-loss gradients, rescaled to the largest norm."""
    rng = np.random.default_rng(0)
    beta, sigma = 0.9, 0.5
    buffer = np.zeros((3, 5))
    tx = balancing.make("db_mtl", 3, beta=beta, beta_sigma=sigma)
    state = tx.init(jnp.zeros(5))
    for k in range(1, 6):
        g = rng.normal(size=(3, 5))
        losses = rng.uniform(0.2, 3.0, 3)
        log_grads = g / (losses[:, None] + 1e-8)
        buffer = log_grads + beta / k**sigma * (buffer - log_grads)
        norms = np.linalg.norm(buffer, axis=1)
        expected = ((norms.max() / (norms + 1e-8))[:, None] * buffer).sum(0)
        update, state = tx.update(
            jnp.asarray(g, jnp.float32), state, task_losses=jnp.asarray(losses, jnp.float32)
        )
        np.testing.assert_allclose(update, expected, rtol=1e-4)


def test_gradvac_matches_numpy_reference_over_steps():
    """The paper's update with explicit vectors over several steps (two tasks, so the task
    order cannot matter); the EMA targets carry from step to step."""
    rng = np.random.default_rng(1)
    beta = 0.3
    target = np.zeros((2, 2))
    tx = balancing.make("gradvac", 2, beta=beta)
    state = tx.init(jnp.zeros(6))
    for _ in range(6):
        g = rng.normal(size=(2, 6))
        out = []
        for i, j in ((0, 1), (1, 0)):
            pc = g[i].copy()
            cos = pc @ g[j] / (np.linalg.norm(pc) * np.linalg.norm(g[j]))
            goal = target[i, j]
            if cos < goal:
                pc = pc + g[j] * np.linalg.norm(pc) * (
                    goal * np.sqrt(1 - cos**2) - cos * np.sqrt(1 - goal**2)
                ) / (np.linalg.norm(g[j]) * np.sqrt(1 - goal**2))
            target[i, j] = (1 - beta) * goal + beta * cos
            out.append(pc)
        update, state = tx.update(jnp.asarray(g, jnp.float32), state)
        np.testing.assert_allclose(update, np.sum(out, axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.inner), target, atol=1e-5)


def test_gradnorm_matches_numpy_reference_over_steps():
    rng = np.random.default_rng(2)
    alpha, lr = 1.5, 0.05
    w, m, v, initial = np.ones(3), np.zeros(3), np.zeros(3), None
    tx = balancing.make("gradnorm", 3, alpha=alpha, learning_rate=lr)
    state = tx.init(jnp.zeros(4))
    for k in range(1, 7):
        g = rng.normal(size=(3, 4)) * np.array([[0.5], [1.0], [3.0]])
        losses = rng.uniform(0.5, 2.0, 3)
        initial = losses if initial is None else initial
        norms = np.linalg.norm(g, axis=1)
        ratio = losses / initial
        ratio = ratio / ratio.mean()
        target = (w * norms).mean() * ratio**alpha
        grad = np.sign(w * norms - target) * norms
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        new_w = np.maximum(w - lr * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k)) + 1e-8), 0)
        update, state = tx.update(
            jnp.asarray(g, jnp.float32), state, task_losses=jnp.asarray(losses, jnp.float32)
        )
        np.testing.assert_allclose(update, w @ g, rtol=1e-4, atol=1e-5)  # this step's weights
        w = 3 * new_w / new_w.sum()
        np.testing.assert_allclose(np.asarray(state.inner.weights), w, rtol=1e-4)


def test_dwa_with_a_window_of_several_steps_matches_a_hand_computed_window():
    """period=3: the ratio is of the mean losses of the two previous complete windows; the
    weights stay equal until two windows have closed, and change only at window ends."""
    rng = np.random.default_rng(4)
    losses = rng.uniform(0.5, 2.0, size=(13, 3))
    period, temp = 3, 2.0
    tx = balancing.make("dwa", 3, temperature=temp, period=period)
    state = tx.init(None)
    for step, loss in enumerate(losses):
        _, state = tx.update(jnp.eye(3), state, task_losses=jnp.asarray(loss))
        done = step // period  # windows complete before this step
        if done < 2:
            expected = np.ones(3)
        else:
            last = losses[(done - 1) * period : done * period].mean(axis=0)
            before = losses[(done - 2) * period : (done - 1) * period].mean(axis=0)
            e = np.exp(last / before / temp)
            expected = 3 * e / e.sum()
        np.testing.assert_allclose(np.asarray(state.weights), expected, rtol=1e-5, err_msg=step)


def test_rlw_weights_follow_the_softmax_of_standard_normals():
    """Over many draws: mean 1/T for each task and the variance of softmax(N(0, I)) (from a
    numpy Monte Carlo of the definition), independent from step to step."""
    t, draws = 3, 4000
    rule = balancing.make_rule("rlw")
    step = jax.jit(lambda s: balancing.compute_weights(rule, s, None, None))
    state = balancing.init_state(rule, t, seed=3)
    got = []
    for _ in range(draws):
        w, state = step(state)
        got.append(np.asarray(w))
    got = np.array(got)
    z = np.random.default_rng(0).standard_normal((200_000, t))
    ref = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got.mean(axis=0), 1 / t, atol=0.01)
    np.testing.assert_allclose(got.var(axis=0), ref.var(axis=0), rtol=0.1)
    lag = np.corrcoef(got[:-1, 0], got[1:, 0])[0, 1]
    assert abs(lag) < 0.06, lag


def _conflicting_grads(seed):
    """T task gradients that pull apart (directions summing to zero) around a small common
    direction: CAGrad's dual optimum is then interior to the simplex."""
    rng = np.random.default_rng(seed)
    t, d = 3 + seed % 3, 8
    u = rng.normal(size=(t, d))
    u -= u.mean(axis=0)
    return u + rng.uniform(0.1, 0.5) * rng.normal(size=(1, d)) + 0.1 * rng.normal(size=(t, d))


def _cagrad_exact(g, c):
    """CAGrad's update from its dual solved to float64 precision: SLSQP for the support,
    then Newton on the KKT system (interior optimum: gradient = lambda * 1, sum w = 1)."""
    gram = g @ g.T
    t = len(gram)
    b, k = np.full(t, 1 / t), c * np.sqrt(gram.mean())
    w = _simplex_reference(lambda w: w @ gram @ b + k * np.sqrt(w @ gram @ w), t)
    assert np.all(w > 1e-3), f"not an interior case: {w}"
    lam = None
    for _ in range(20):
        s = np.sqrt(w @ gram @ w)
        grad = gram @ b + k * gram @ w / s
        hess = k * (gram / s - np.outer(gram @ w, gram @ w) / s**3)
        lam = grad.mean() if lam is None else lam
        kkt = np.block([[hess, -np.ones((t, 1))], [np.ones((1, t)), np.zeros((1, 1))]])
        step = np.linalg.solve(kkt, -np.concatenate([grad - lam, [w.sum() - 1]]))
        w, lam = w + step[:t], lam + step[t]
    gw = w @ g
    return (g.mean(0) + k / np.linalg.norm(gw) * gw) / (1 + c * c)


@pytest.mark.parametrize("seed", [13, 15, 16, 24])
def test_cagrad_reaches_the_exact_interior_optimum(seed):
    """To 1e-5 of the update's norm (the first-order solver alone stops at a few 1e-5; its
    Newton polish on the support reaches float32 precision)."""
    g = _conflicting_grads(seed)
    expected = _cagrad_exact(g, 0.4)
    update, _ = combine("cagrad", g, c=0.4)
    np.testing.assert_allclose(update, expected, atol=1e-5 * np.linalg.norm(expected))


def _dual_cone_projection_exact(g, v):
    """argmin ||x - v||^2 s.t. g x >= 0, exactly: x = v + g^T mu over every active set,
    keeping the feasible one (mu >= 0, g x >= 0) nearest to v."""
    gram = g @ g.T
    best = None
    for r in range(len(g) + 1):
        for active in itertools.combinations(range(len(g)), r):
            a = list(active)
            mu = np.zeros(len(g))
            if a:
                mu[a] = np.linalg.solve(gram[np.ix_(a, a)], -(g[a] @ v))
            x = v + g.T @ mu
            feasible = np.all(mu >= -1e-12) and np.all(g @ x >= -1e-10)
            if feasible and (best is None or np.sum((x - v) ** 2) < np.sum((best - v) ** 2)):
                best = x
    return best


@pytest.mark.parametrize("seed", range(6))
def test_upgrad_matches_exact_dual_cone_projections(seed):
    g = _conflicting_grads(seed) if seed % 2 else random_grads(seed, 4, d=6).astype(np.float64)
    expected = np.mean([_dual_cone_projection_exact(g, gi) for gi in g], axis=0)
    update, _ = combine("upgrad", g)
    np.testing.assert_allclose(update, expected, atol=1e-5 * np.linalg.norm(expected))


TORCHJD = json.loads((pathlib.Path(__file__).parent / "data" / "torchjd_0_18.json").read_text())


@pytest.mark.parametrize(
    "name, kwargs, key",
    [
        ("config", {}, "config"),
        ("dualproj", {}, "dualproj"),
        ("fairgrad", {"alpha": 1.0}, "fairgrad_alpha1"),
        ("fairgrad", {"alpha": 2.0}, "fairgrad_alpha2"),
        ("upgrad", {}, "upgrad"),
    ],
)
def test_aggregators_match_torchjd(name, kwargs, key):
    """TorchJD 0.18's aggregator of the same name on the same matrices (reference outputs
    in tests/data/torchjd_0_18.json, made by experiments/torchjd_reference.py): cosine >=
    0.999 and the same norm to 1e-3. Except UPGrad's norm: TorchJD's projector adds 1e-4 to
    the normalised Gramian's diagonal, which moves its answer off the exact projection by
    up to 4% in norm on these cases (ours is checked against the exact one above)."""
    for case in TORCHJD["cases"]:
        g = np.asarray(case["matrix"])
        expected = np.asarray(case[key])
        update, _ = combine(name, g, **kwargs)
        cos = update @ expected / (np.linalg.norm(update) * np.linalg.norm(expected))
        assert cos >= 0.999, (name, g.shape, cos)
        if name != "upgrad":
            assert np.linalg.norm(update) == pytest.approx(np.linalg.norm(expected), rel=1e-3)


def test_fairgrad_at_alpha_one_is_nash_bargaining_on_the_raw_gramian():
    g = random_grads(3, 4, d=9).astype(np.float64)
    _, state = combine("fairgrad", g, alpha=1.0)
    w = np.asarray(state.weights, np.float64)
    np.testing.assert_allclose(w * ((g @ g.T) @ w), 1.0, rtol=1e-3)


def test_geometric_mean_weights_give_the_gradient_of_the_geometric_mean():
    """sum_t w_t grad L_t == grad (prod_t L_t)^(1/T), on a toy model with three losses."""

    def losses(x):
        return jnp.stack([jnp.sum((x - 1.0) ** 2) + 0.1, jnp.sum(jnp.abs(x)) + 2.0,
                          jnp.exp(x[0]) + x[1] ** 2])  # fmt: skip

    x = jnp.array([0.3, -1.2, 2.0])
    rule = balancing.make_rule("geometric_mean")
    w, _ = balancing.compute_weights(rule, balancing.init_state(rule, 3), losses(x), None)
    weighted = jax.grad(lambda x: jnp.dot(w, losses(x)))(x)
    direct = jax.grad(lambda x: jnp.prod(losses(x)) ** (1 / 3))(x)
    np.testing.assert_allclose(weighted, direct, rtol=1e-5)


def test_imtl_l_learns_inverse_losses_and_starts_at_one():
    first, w, _ = _learned_weights_on_fixed_losses("imtl_l")
    np.testing.assert_allclose(first, [1.0, 1.0])
    # Stationary point of exp(s) L - s is exp(s) = 1 / L: every scaled loss is 1.
    np.testing.assert_allclose(w, [2.0, 0.25], rtol=2e-2)


def test_graddrop_keeps_one_sign_per_coordinate_with_the_purity_probability():
    """Coordinates where the tasks agree in sign pass as their sum; where they disagree,
    the update is the sum of the positive or of the negative components, the positive one
    with probability P = (1 + sum g / sum |g|) / 2 (over many draws)."""
    g = np.array([[1.0, -2.0, 3.0, 0.5], [2.0, -1.0, -1.0, -1.5], [0.5, -0.5, -1.0, 0.0]])
    positive_sum = np.where(g > 0, g, 0).sum(0)
    negative_sum = np.where(g < 0, g, 0).sum(0)
    purity = 0.5 * (1 + g.sum(0) / np.abs(g).sum(0))
    rule = balancing.make_rule("graddrop")
    step = jax.jit(lambda s: balancing.combine_task_grads(rule, s, jnp.asarray(g), None))
    state = balancing.init_state(rule, 3, seed=5)
    chose_positive = []
    for _ in range(2000):
        update, _, _, state = step(state)
        update = np.asarray(update)
        np.testing.assert_allclose(update[:2], g[:, :2].sum(0), rtol=1e-6)  # agreeing signs
        is_pos = np.isclose(update, positive_sum, atol=1e-6)
        assert np.all(is_pos | np.isclose(update, negative_sum, atol=1e-6)), update
        chose_positive.append(is_pos[2:])
    np.testing.assert_allclose(np.mean(chose_positive, axis=0), purity[2:], atol=0.04)
    leaky = balancing.make_rule("graddrop", leak=1.0)  # nothing dropped: the plain sum
    update, *_ = balancing.combine_task_grads(leaky, balancing.init_state(leaky, 3), g, None)
    np.testing.assert_allclose(update, g.sum(0), rtol=1e-6)


def test_stch_warms_up_on_log_losses_then_follows_the_smooth_tchebycheff_gradient():
    rng = np.random.default_rng(2)
    warmup, mu = 4, 0.5
    rule = balancing.make_rule("stch", mu=mu, warmup_steps=warmup)
    state = balancing.init_state(rule, 3)
    history = rng.uniform(0.2, 3.0, size=(7, 3))
    for i, losses in enumerate(history):
        w, state = balancing.compute_weights(rule, state, jnp.asarray(losses), None)
        if i < warmup:  # the gradient of sum log L
            np.testing.assert_allclose(w, 1 / losses, rtol=1e-5)
            continue
        nadir = history[:warmup].mean(axis=0)
        scalarised = jax.grad(lambda L, n=nadir: 3 * mu * jax.nn.logsumexp(jnp.log(L / n) / mu))(
            jnp.asarray(losses)
        )
        np.testing.assert_allclose(w, scalarised, rtol=1e-5)


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_stateful_weightings_match_torchjd_step_by_step(name):
    """The weights after each Gramian of a 12-step sequence, against TorchJD 0.18's
    MoDoWeighting(gamma=0.1, rho=0.1) and SDMGradWeighting(lambda_=0.3) fed the same."""
    sequence = TORCHJD["sequences"]
    rule = balancing.make_rule(name)
    state = balancing.init_state(rule, 3)
    step = jax.jit(lambda s, g: balancing.compute_weights(rule, s, None, g))
    for gram, expected in zip(sequence["gramians"], sequence[name], strict=True):
        w, state = step(state, jnp.asarray(gram, jnp.float32))
        # float32 against TorchJD's float64. SDMGrad's inner steps of rate 10 amplify the
        # round-off: the same recurrence in float64 numpy matches TorchJD to 1e-12, in
        # float32 numpy it drifts by up to 1.3e-3 on this sequence.
        np.testing.assert_allclose(w, expected, atol=2e-5 if name == "modo" else 2e-3)


@pytest.mark.parametrize(
    "key, kwargs",
    [("excess_mtl", {}), ("excess_mtl_warmup3", {"robust_step_size": 0.5, "warmup_steps": 3})],
)
def test_excess_mtl_matches_torchjd_step_by_step(key, kwargs):
    """The update after each task-gradient matrix of a 12-step sequence, against TorchJD
    0.18's ExcessMTL fed the same (its AdaGrad state is per parameter and per task)."""
    sequence = TORCHJD["sequences"]
    matrices = [jnp.asarray(m, jnp.float32) for m in sequence["matrices"]]
    tx = balancing.make("excess_mtl", 3, **kwargs)
    state = tx.init(matrices[0][0])
    update_fn = jax.jit(tx.update)
    for matrix, expected in zip(matrices, sequence[key], strict=True):
        update, state = update_fn(matrix, state)
        np.testing.assert_allclose(update, expected, rtol=1e-4, atol=1e-5)


def test_moco_follows_its_recurrence():
    """Against a numpy transcription of MoCo's updates (LibMTL's form) over 10 steps of
    changing task gradients and losses."""
    rng = np.random.default_rng(9)
    t, d = 3, 6
    tx = balancing.make("moco", t)
    state = tx.init(jnp.zeros((d,)))
    update_fn = jax.jit(lambda g, s, losses: tx.update(g, s, task_losses=losses))
    y, lam = np.zeros((t, d)), np.full(t, 1 / t)
    for k in range(1, 11):
        g = rng.normal(size=(t, d))
        losses = rng.uniform(0.5, 2.0, size=t)
        update, state = update_fn(jnp.asarray(g, jnp.float32), state, jnp.asarray(losses))
        scaled = g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-8) * losses[:, None]
        y = y - 0.5 / k**0.5 * (y - scaled)
        z = lam - 0.1 / k**0.5 * (y @ y.T) @ lam
        lam = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(update, y.T @ lam, rtol=1e-4, atol=1e-6)
