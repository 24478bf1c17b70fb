"""Methods that read task gradients: GradNorm, PCGrad, GradVac, CAGrad, MGDA, IMTL-G,
Aligned-MTL, Nash-MTL and UPGrad through their Gramian, DB-MTL through moving averages.

Each method's combined update is a linear combination ``sum_t w_t g_t`` of the task
gradients whose coefficients depend on the gradients only through inner products, so each is
written as "Gramian -> weights". That is what makes them cheap (T x T work after the
gradients exist) and exact under data parallelism (the Gramian of the global batch).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.balancing import solvers
from mtl_jax.balancing.core import WeightingRule, normalized, weighted_sum

_EPS = 1e-12


def _stateless(t: int) -> jax.Array:
    return jnp.zeros((t,), jnp.float32)


def pcgrad() -> WeightingRule:
    """Projecting conflicting gradients (Yu et al., NeurIPS 2020).

    For each task i, its gradient is projected, in a random order over the other tasks j, onto
    the normal plane of every ``g_j`` it conflicts with (``<g_i^pc, g_j> < 0``); the update is
    the sum of the projected gradients. Each projected gradient is tracked as coefficients
    over the original gradients, so only the Gramian is needed.
    """

    def weights(state, losses, gram, key):
        t = gram.shape[0]
        eye = jnp.eye(t, dtype=gram.dtype)
        orders = jax.vmap(lambda k: jax.random.permutation(k, t))(jax.random.split(key, t))

        def project_task(i, order):
            def step(coef, j):
                dot = coef @ gram[:, j]
                conflict = (dot < 0) & (j != i)
                scale = jnp.where(conflict, dot / jnp.maximum(gram[j, j], _EPS), 0.0)
                return coef - scale * eye[j], None

            coef, _ = jax.lax.scan(step, eye[i], order)
            return coef

        coefs = jax.vmap(project_task)(jnp.arange(t), orders)
        return coefs.sum(axis=0), state

    return WeightingRule("pcgrad", True, False, _stateless, weights)


def gradvac(beta: float = 0.01) -> WeightingRule:
    """Gradient vaccine (Wang et al., ICLR 2021).

    Like PCGrad, but each pair (i, j) has an adaptive target cosine similarity
    ``phi_hat_ij``, an EMA (rate ``beta``) of the observed ones; whenever
    ``cos(g_i^pc, g_j) < phi_hat_ij``, ``g_i^pc`` gains the multiple of ``g_j`` that lifts the
    cosine exactly to the target. The state holds the T x T targets.
    """

    def init(t):
        return jnp.zeros((t, t), jnp.float32)

    def weights(target, losses, gram, key):
        t = gram.shape[0]
        eye = jnp.eye(t, dtype=gram.dtype)
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), _EPS))

        def task(i, carry):
            total, target, key = carry
            key, sub = jax.random.split(key)
            order = jax.random.permutation(sub, t)

            def step(c, j):
                coef, target = c
                pc_norm = jnp.sqrt(jnp.maximum(coef @ gram @ coef, _EPS))
                cos = (coef @ gram[:, j]) / (pc_norm * norms[j])
                goal = target[i, j]
                lift = (
                    pc_norm
                    * (goal * jnp.sqrt(1 - cos**2) - cos * jnp.sqrt(1 - goal**2))
                    / (norms[j] * jnp.sqrt(jnp.maximum(1 - goal**2, _EPS)))
                )
                active = (j != i) & (cos < goal)
                coef = coef + jnp.where(active, lift, 0.0) * eye[j]
                new_goal = jnp.where(j != i, (1 - beta) * goal + beta * cos, goal)
                return (coef, target.at[i, j].set(new_goal)), None

            (coef, target), _ = jax.lax.scan(step, (eye[i], target), order)
            return total + coef, target, key

        total, target, _ = jax.lax.fori_loop(0, t, task, (jnp.zeros((t,), gram.dtype), target, key))
        return total, target

    return WeightingRule("gradvac", True, False, init, weights)


def mgda(iterations: int = 300) -> WeightingRule:
    """Multiple-gradient descent (Desideri 2012; Sener & Koltun, NeurIPS 2018): the
    min-norm point of the convex hull of the task gradients, whose negative is a descent
    direction for every task unless the point is Pareto-stationary."""

    def weights(state, losses, gram, key):
        return solvers.min_norm_weights(normalized(gram), iterations), state

    return WeightingRule("mgda", True, False, _stateless, weights)


def cagrad(c: float = 0.4, rescale: int = 1, iterations: int = 500) -> WeightingRule:
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    ``d = g0 + c ||g0|| g_w / ||g_w||`` where ``g0`` is the mean gradient and ``w`` solves the
    dual on the simplex (``solvers.cagrad_weights``); ``rescale=1`` divides by ``1 + c^2`` as
    the paper's code does by default (0: no rescaling, 2: divide by ``1 + c``).
    """
    if c < 0 or rescale not in (0, 1, 2):
        raise ValueError(f"cagrad needs c >= 0 and rescale in (0, 1, 2), got {c}, {rescale}")
    divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]

    def weights(state, losses, gram, key):
        t = gram.shape[0]
        g = normalized(gram)
        w = solvers.cagrad_weights(g, c, iterations)
        g0_norm = jnp.sqrt(jnp.maximum(jnp.mean(g), 0.0) + _EPS)
        gw_norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0) + _EPS)
        combined = jnp.full((t,), 1.0 / t) + (c * g0_norm / gw_norm) * w
        return combined / divisor, state

    return WeightingRule("cagrad", True, False, _stateless, weights)


def imtl_g() -> WeightingRule:
    """Gradient part of impartial MTL (Liu et al., ICLR 2021): the weights (summing to 1) whose
    combined gradient has equal projections on every task's unit gradient."""

    def weights(state, losses, gram, key):
        t = gram.shape[0]
        if t == 1:
            return jnp.ones((1,)), state
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), _EPS))
        cross = gram / norms[None, :]  # cross[i, j] = <g_i, u_j>
        # D rows: g_1 - g_k; U rows: u_1 - u_k, for k = 2..T.
        d_u = cross[0, 0] - cross[0:1, 1:] - cross[1:, 0:1] + cross[1:, 1:]
        g1_u = cross[0, 0] - cross[0, 1:]
        rest = jnp.linalg.solve(d_u.T, g1_u)  # alpha_{2:T} = g_1 U^T (D U^T)^-1
        return jnp.concatenate([1.0 - rest.sum(keepdims=True), rest]), state

    return WeightingRule("imtl_g", True, False, _stateless, weights)


def aligned_mtl() -> WeightingRule:
    """Aligned-MTL (Senushkin et al., CVPR 2023): align the task gradients into an orthogonal
    system of equal norms (condition number 1) by ``B = sigma_min V Sigma^-1 V^T`` from the
    Gramian's eigendecomposition, then sum the aligned gradients: weights ``B 1``."""

    def weights(state, losses, gram, key):
        t = gram.shape[0]
        eigvals, eigvecs = jnp.linalg.eigh(gram)
        tol = jnp.max(eigvals) * t * jnp.finfo(gram.dtype).eps
        keep = eigvals > tol
        sigma = jnp.sqrt(jnp.where(keep, eigvals, 1.0))
        sigma_min = jnp.min(jnp.where(keep, sigma, jnp.inf))
        inv = jnp.where(keep, 1.0 / sigma, 0.0)
        b = sigma_min * (eigvecs * inv[None, :]) @ eigvecs.T
        return b.sum(axis=1), state

    return WeightingRule("aligned_mtl", True, False, _stateless, weights)


def nash_mtl(iterations: int = 30) -> WeightingRule:
    """Nash-MTL (Navon et al., ICML 2022): the bargaining solution ``G alpha = 1 / alpha`` on
    the Gramian normalised by its Frobenius norm (as the paper's code does)."""

    def weights(state, losses, gram, key):
        g = gram / jnp.maximum(jnp.linalg.norm(gram), _EPS)
        return solvers.nash_weights(g, iterations), state

    return WeightingRule("nash_mtl", True, False, _stateless, weights)


def upgrad(sweeps: int = 100) -> WeightingRule:
    """Unconflicting projection of gradients (Quinton & Rey, 2024; torchjd).

    Each task gradient is projected onto the dual cone of all of them,
    ``{x : <g_k, x> >= 0 for all k}``; the update is the mean of the projections. The
    projection of ``g_i`` is ``J^T u_i`` with ``u_i = argmin_{u >= e_i} u^T G u``, a small
    box-constrained QP solved by coordinate descent.
    """

    def weights(state, losses, gram, key):
        t = gram.shape[0]
        g = normalized(gram)
        u = jax.vmap(lambda e: solvers.box_qp_weights(g, e, sweeps))(jnp.eye(t, dtype=g.dtype))
        return u.mean(axis=0), state

    return WeightingRule("upgrad", True, False, _stateless, weights)


def dualproj(sweeps: int = 100) -> WeightingRule:
    """DualProj (Quinton & Rey, 2024; GEM's projection, Lopez-Paz & Ranzato 2017): the mean
    gradient projected onto the dual cone of the task gradients, ``J^T v`` with
    ``v = argmin_{v >= 1/T} v^T G v``, so no task's loss goes up to first order."""

    def weights(state, losses, gram, key):
        t = gram.shape[0]
        lower = jnp.full((t,), 1.0 / t, gram.dtype)
        return solvers.box_qp_weights(normalized(gram), lower, sweeps), state

    return WeightingRule("dualproj", True, False, _stateless, weights)


def config() -> WeightingRule:
    """ConFIG (Liu et al., ICLR 2025): the direction ``u`` with equal cosine to every task
    gradient (``u = pinv(U) 1`` for the unit gradients ``U``), scaled by the sum of the
    gradients' projections on it. From the Gramian: with ``c = pinv(D^-1 G D^-1) 1`` and
    ``a = D^-1 c`` (D the gradient norms), ``u = J^T a`` and the update is
    ``(1^T G a / a^T G a) J^T a``."""

    def weights(state, losses, gram, key):
        t = gram.shape[0]
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
        inv = jnp.where(norms > _EPS, 1.0 / jnp.maximum(norms, _EPS), 0.0)
        units = gram * inv[:, None] * inv[None, :]
        a = inv * (jnp.linalg.pinv(units, hermitian=True) @ jnp.ones((t,), gram.dtype))
        return (jnp.sum(gram @ a) / jnp.maximum(a @ gram @ a, _EPS)) * a, state

    return WeightingRule("config", True, False, _stateless, weights)


def fairgrad(alpha: float = 1.0, iterations: int = 30) -> WeightingRule:
    """FairGrad (Ban & Ji, ICML 2024): the alpha-fair weights, ``G w = w^(-1/alpha)``
    (alpha = 1: proportional fairness, Nash-MTL's equation on the unnormalised Gramian;
    larger alpha leans toward the worst-off task). Solved on the Gramian divided by its
    mean diagonal and rescaled, which gives the same ``w`` with better-conditioned steps."""
    if alpha <= 0:
        raise ValueError(f"fairgrad needs alpha > 0, got {alpha}")

    def weights(state, losses, gram, key):
        scale = jnp.maximum(jnp.mean(jnp.diag(gram)), _EPS)
        w = solvers.fair_weights(gram / scale, alpha, iterations)
        return w * scale ** (-alpha / (alpha + 1.0)), state

    return WeightingRule("fairgrad", True, False, _stateless, weights)


def graddrop(leak: float = 0.0) -> WeightingRule:
    """Gradient sign dropout (Chen et al., NeurIPS 2020), per trunk parameter coordinate:
    with sign purity ``P = (1 + sum_t g_t / sum_t |g_t|) / 2`` and ``U ~ Uniform(0, 1)``,
    keep the tasks' positive components where ``P > U`` and the negative ones otherwise,
    and sum; ``leak`` in [0, 1] passes that share of every dropped component through.
    Not a weighting of whole task gradients (the choice is per coordinate), so it uses the
    contract's ``combine`` hook; the reported weights are ones."""
    if not 0.0 <= leak <= 1.0:
        raise ValueError(f"graddrop needs leak in [0, 1], got {leak}")

    def combine(state, task_grads, losses, key):
        leaves, treedef = jax.tree.flatten(task_grads)
        keys = jax.random.split(key, len(leaves))

        def drop(g, k):
            purity = 0.5 * (1.0 + jnp.sum(g, axis=0) / (jnp.sum(jnp.abs(g), axis=0) + 1e-12))
            positive = purity > jax.random.uniform(k, purity.shape)
            keep = jnp.where(positive, g > 0, g < 0)
            return jnp.sum(jnp.where(keep, g, leak * g), axis=0)

        update = jax.tree.unflatten(
            treedef, [drop(g, k) for g, k in zip(leaves, keys, strict=True)]
        )
        t = leaves[0].shape[0]
        return update, jnp.ones((t,)), jnp.ones((t,)), state

    return WeightingRule("graddrop", True, False, _stateless, None, combine=combine)


def _uniform(t: int) -> jax.Array:
    return jnp.full((t,), 1.0 / t, jnp.float32)


def modo(gamma: float = 0.1, rho: float = 0.1) -> WeightingRule:
    """MoDo (Chen et al., JMLR 2024): the weights follow one projected-gradient step per
    training step, ``lambda <- P_simplex(lambda - gamma (G lambda + rho lambda))``, on the
    unnormalised Gramian (gamma is in its units). The paper takes ``G`` from two independent
    batches; here, as for every Gramian method, it is the one batch's ``J J^T``."""
    if gamma <= 0 or rho < 0:
        raise ValueError(f"modo needs gamma > 0 and rho >= 0, got {gamma}, {rho}")

    def weights(state, losses, gram, key):
        lam = solvers.project_to_simplex(state - gamma * (gram @ state + rho * state))
        return lam, lam

    return WeightingRule("modo", True, False, _uniform, weights)


def sdmgrad(
    lambda_: float = 0.3, lr: float = 10.0, momentum: float = 0.5, iterations: int = 20
) -> WeightingRule:
    """SDMGrad (Xiao et al., NeurIPS 2023): ``iterations`` steps of projected SGD with
    momentum on ``w -> 1/2 ||J^T (w + lambda_ / T)||^2`` over the simplex, warm-started
    from the last step's ``w``, on the Gramian divided by the squared mean gradient norm (as
    the authors' code and LibMTL do); the update is ``J^T (w + lambda_ / T) / (1 + lambda_)``,
    pulled toward the mean gradient by ``lambda_``. One batch's Gramian, as for MoDo."""
    if lambda_ < 0 or lr <= 0 or not 0 <= momentum < 1 or iterations < 1:
        raise ValueError(
            "sdmgrad needs lambda_ >= 0, lr > 0, momentum in [0, 1) and iterations >= 1, got "
            f"{lambda_}, {lr}, {momentum}, {iterations}"
        )

    def weights(state, losses, gram, key):
        t = gram.shape[0]
        pref = jnp.full((t,), 1.0 / t, gram.dtype)
        scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)))
        a = gram / (scale**2 + 1e-8)

        def body(i, carry):
            w, velocity = carry
            grad = a @ (w + lambda_ * pref)
            velocity = jnp.where(i == 0, grad, momentum * velocity + grad)
            return solvers.project_to_simplex(w - lr * velocity), velocity

        w, _ = jax.lax.fori_loop(0, iterations, body, (state, jnp.zeros_like(state)))
        return (w + lambda_ * pref) / (1.0 + lambda_), w

    return WeightingRule("sdmgrad", True, False, _uniform, weights)


class ExcessMTLState(NamedTuple):
    sq_sum: Any  # task-leading squared gradients summed over steps (AdaGrad's diagonal)
    warmup_sum: jax.Array  # (T,) excess risks summed over the warm-up
    initial: jax.Array  # (T,) the baseline excess risk each later one is divided by
    has_initial: jax.Array
    weights: jax.Array  # (T,)
    step: jax.Array


def excess_mtl(robust_step_size: float = 1.0, warmup_steps: int = 0) -> WeightingRule:
    """ExcessMTL (He et al., ICML 2024): task t's excess risk is estimated as
    ``g_t^T H_t^-1 g_t`` with AdaGrad's diagonal ``H_t = sqrt(sum of g_t^2 so far)`` over the
    routed parameters, divided by its baseline (the mean over ``warmup_steps`` uniform-weight
    steps, or the first step's), and the weights take an exponentiated-gradient step toward
    the tasks with the largest excess (``robust_step_size``). Needs per-parameter state, so
    it uses the ``combine`` hook, as TorchJD's aggregator of the same name does."""
    if robust_step_size <= 0 or warmup_steps < 0:
        raise ValueError(
            f"excess_mtl needs robust_step_size > 0, warmup_steps >= 0; got "
            f"{robust_step_size}, {warmup_steps}"
        )

    def init(t, params):
        zeros = jnp.zeros((t,), jnp.float32)
        return ExcessMTLState(
            jax.tree.map(lambda p: jnp.zeros((t, *p.shape), jnp.float32), params),
            zeros,
            zeros,
            jnp.zeros((), bool),
            jnp.full((t,), 1.0 / t, jnp.float32),
            jnp.zeros((), jnp.int32),
        )

    def combine(state, task_grads, losses, key):
        sq = jax.tree.map(jnp.square, task_grads)
        sq_sum = jax.tree.map(jnp.add, state.sq_sum, sq)
        excess = sum(
            jnp.sum((s / jnp.sqrt(h + 1e-7)).reshape(s.shape[0], -1), axis=1)
            for s, h in zip(jax.tree.leaves(sq), jax.tree.leaves(sq_sum), strict=True)
        )
        warming = state.step < warmup_steps
        first = ~warming & ~state.has_initial
        baseline = state.warmup_sum / warmup_steps if warmup_steps > 0 else excess
        initial = jnp.where(first, baseline, state.initial)
        raw = first & (warmup_steps == 0)  # no warm-up: the first step's excess, unscaled
        scaled = jnp.where(raw, excess, excess / (initial + 1e-7))
        stepped = jax.nn.softmax(jnp.log(state.weights) + robust_step_size * scaled)
        weights = jnp.where(warming, state.weights, stepped)
        update = weighted_sum(task_grads, weights)
        t = weights.shape[0]
        return (
            update,
            weights,
            jnp.ones((t,)),
            ExcessMTLState(
                sq_sum,
                jnp.where(warming, state.warmup_sum + excess, state.warmup_sum),
                initial,
                state.has_initial | ~warming,
                weights,
                state.step + 1,
            ),
        )

    return WeightingRule(
        "excess_mtl", True, False, init, None, combine=combine, init_needs_params=True
    )


class MoCoState(NamedTuple):
    tracked: Any  # task-leading moving averages of the (rescaled) task gradients
    lambdas: jax.Array  # (T,) on the simplex
    step: jax.Array


def moco(
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
) -> WeightingRule:
    """MoCo (Fernando et al., ICLR 2023), as LibMTL runs it: each task gradient rescaled to
    its loss (``g_t L_t / ||g_t||``) is tracked by a moving average ``y_t`` (rate
    ``beta / k^beta_sigma`` at step k), the weights take a step ``lambda <- softmax(lambda -
    gamma / k^gamma_sigma (Y Y^T + rho I) lambda)``, and the update is ``Y^T lambda``: a
    min-norm direction of the tracked gradients, whose bias shrinks as the averages settle.
    Per-parameter state, so it uses the ``combine`` hook."""

    def init(t, params):
        return MoCoState(
            jax.tree.map(lambda p: jnp.zeros((t, *p.shape), jnp.float32), params),
            jnp.full((t,), 1.0 / t, jnp.float32),
            jnp.zeros((), jnp.int32),
        )

    def combine(state, task_grads, losses, key):
        step = state.step + 1
        k = step.astype(jnp.float32)
        t = losses.shape[0]
        norms = jnp.sqrt(
            sum(jnp.sum(g.reshape(t, -1) ** 2, axis=1) for g in jax.tree.leaves(task_grads))
        )
        scale = losses / (norms + 1e-8)
        rate = beta / k**beta_sigma
        tracked = jax.tree.map(
            lambda y, g: y - rate * (y - g * scale.reshape((-1,) + (1,) * (g.ndim - 1))),
            state.tracked,
            task_grads,
        )
        gram = sum(f @ f.T for f in (y.reshape(t, -1) for y in jax.tree.leaves(tracked)))
        step_size = gamma / k**gamma_sigma
        lambdas = jax.nn.softmax(
            state.lambdas - step_size * (gram + rho * jnp.eye(t)) @ state.lambdas
        )
        update = weighted_sum(tracked, lambdas)
        return update, lambdas, jnp.ones((t,)), MoCoState(tracked, lambdas, step)

    return WeightingRule("moco", True, True, init, None, combine=combine, init_needs_params=True)


class GradNormState(NamedTuple):
    weights: jax.Array  # (T,) loss weights, summing to T
    initial_losses: jax.Array  # (T,) L_t(0)
    started: jax.Array
    opt_state: optax.OptState


def gradnorm(alpha: float = 1.5, learning_rate: float = 1e-3) -> WeightingRule:
    """GradNorm (Chen et al., ICML 2018).

    Learns loss weights ``w`` (summing to T) so that each task's weighted gradient norm on the
    shared parameters, ``w_t ||g_t||``, tracks the mean norm times ``r_t^alpha``, where
    ``r_t`` is the task's loss ratio ``L_t / L_t(0)`` relative to the mean ratio. The weights
    move by Adam on ``sum_t |w_t ||g_t|| - target_t|`` (targets held constant, as in the
    paper) and are renormalised to sum to T; they weight the whole model's loss. The norms
    are taken over the routed shared group (the whole trunk here; the paper allows any
    shared subset and suggests the last shared layer to save compute).

    The weights' learning rate defaults to 1e-3, the order of the networks' own (the paper
    trains ``w`` alongside the network): at 1e-2 the weights of the sparse e-commerce rating
    task fall to 0.04-0.1 within a few hundred steps and its test RMSE ends worse than the
    training mean's.
    """
    optimizer = optax.adam(learning_rate)

    def init(t):
        w = jnp.ones((t,), jnp.float32)
        return GradNormState(w, jnp.ones((t,), jnp.float32), jnp.zeros((), bool), optimizer.init(w))

    def weights(state, losses, gram, key):
        t = gram.shape[0]
        initial = jnp.where(state.started, state.initial_losses, losses)
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), _EPS))
        weighted = state.weights * norms
        ratio = losses / jnp.maximum(initial, _EPS)
        ratio = ratio / jnp.maximum(jnp.mean(ratio), _EPS)
        target = jnp.mean(weighted) * ratio**alpha
        grad_w = jnp.sign(weighted - target) * norms
        updates, opt_state = optimizer.update(grad_w, state.opt_state, state.weights)
        new_w = jnp.maximum(optax.apply_updates(state.weights, updates), 0.0)
        new_w = t * new_w / jnp.maximum(jnp.sum(new_w), _EPS)
        return state.weights, GradNormState(new_w, initial, jnp.ones((), bool), opt_state)

    return WeightingRule("gradnorm", True, True, init, weights, weights_whole_model=True)


class DBMTLState(NamedTuple):
    buffer: object  # task-leading moving averages of the log-loss gradients, like the group
    step: jax.Array


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.5) -> WeightingRule:
    """Dual-balancing MTL (Lin et al., 2023).

    Loss scales are balanced by training on ``log L_t`` (task gradients ``g_t / L_t``);
    gradient magnitudes by keeping a moving average ``m_t`` of those gradients (rate
    ``beta / k^beta_sigma`` at step k, as in the authors' code) and stepping along
    ``sum_t (max_s ||m_s|| / ||m_t||) m_t``. Parameters outside the routed group get the
    gradient of ``sum_t log L_t``.
    """

    def init(t, params):
        return DBMTLState(
            jax.tree.map(lambda p: jnp.zeros((t, *p.shape), jnp.float32), params),
            jnp.zeros((), jnp.int32),
        )

    def combine(state, task_grads, losses, key):
        step = state.step + 1
        inv = 1.0 / (losses + 1e-8)
        rate = beta / step.astype(jnp.float32) ** beta_sigma
        log_grads = jax.tree.map(lambda g: g * inv.reshape((-1,) + (1,) * (g.ndim - 1)), task_grads)
        buffer = jax.tree.map(lambda b, g: g + rate * (b - g), state.buffer, log_grads)
        norms = jnp.sqrt(
            sum(jnp.sum(b.reshape(b.shape[0], -1) ** 2, axis=1) for b in jax.tree.leaves(buffer))
        )
        alpha = jnp.max(norms) / (norms + 1e-8)
        update = jax.tree.map(lambda b: jnp.tensordot(alpha, b, axes=1), buffer)
        return update, alpha, inv, DBMTLState(buffer, step)

    return WeightingRule("db_mtl", True, True, init, None, combine=combine, init_needs_params=True)
