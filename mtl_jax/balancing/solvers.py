"""Small fixed-budget solvers that run inside ``jit``: no scipy or cvxpy in the train step.

All work on T x T matrices (T = number of tasks), so even hundreds of iterations cost
microseconds next to a backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def project_to_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, Duchi et al. 2008)."""
    n = v.shape[0]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    idx = jnp.arange(1, n + 1)
    cond = u - css / idx > 0
    rho = jnp.max(jnp.where(cond, idx, 0))
    theta = css[rho - 1] / rho
    return jnp.maximum(v - theta, 0.0)


def _simplex_minimize(grad_fn, init: jax.Array, step: jax.Array, iterations: int) -> jax.Array:
    """Accelerated projected gradient (FISTA) over the probability simplex."""

    def body(_, carry):
        w, y, t = carry
        w_next = project_to_simplex(y - step * grad_fn(y))
        t_next = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y_next = w_next + ((t - 1.0) / t_next) * (w_next - w)
        return w_next, y_next, t_next

    w, _, _ = jax.lax.fori_loop(0, iterations, body, (init, init, jnp.float32(1.0)))
    return w


def min_norm_weights(gram: jax.Array, iterations: int = 300) -> jax.Array:
    """argmin over the simplex of ``w^T G w``: the min-norm point of the gradients' hull (MGDA).

    FISTA, then the Newton polish on the support that CAGrad uses: on an ill-conditioned
    Gramian the first-order answer can be 3e-4 off in a small weight (a scoped-Gramian test
    in tests/test_train.py caught it); the polish reaches float32 precision."""
    t = gram.shape[0]
    lipschitz = 2.0 * jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], 1e-12)
    init = jnp.full((t,), 1.0 / t, gram.dtype)
    w = _simplex_minimize(lambda w: 2.0 * gram @ w, init, 1.0 / lipschitz, iterations)
    return _polish_on_support(
        w, lambda w: w @ gram @ w, lambda w: 2.0 * gram @ w, lambda w: 2.0 * gram
    )


def cagrad_weights(gram: jax.Array, c: float, iterations: int = 500) -> jax.Array:
    """CAGrad's dual: argmin over the simplex of ``w^T G 1/T + c ||g0|| sqrt(w^T G w)``.

    ``||g0||`` is the norm of the mean gradient. The objective is convex but only
    Lipschitz-smooth away from ``G w = 0``; a small floor inside the square root keeps the
    projected-gradient steps finite.
    """
    t = gram.shape[0]
    mean_dir = gram @ jnp.full((t,), 1.0 / t, gram.dtype)
    g0_norm = jnp.sqrt(jnp.maximum(jnp.mean(gram), 0.0) + 1e-12)
    floor = 1e-6 * jnp.maximum(jnp.trace(gram) / t, 1e-12)

    def grad_fn(w):
        gw_norm = jnp.sqrt(jnp.maximum(w @ gram @ w, 0.0) + floor)
        return mean_dir + c * g0_norm * (gram @ w) / gw_norm

    def objective(w):
        return w @ mean_dir + c * g0_norm * jnp.sqrt(jnp.maximum(w @ gram @ w, 0.0) + floor)

    def hessian(w):
        gw = gram @ w
        s = jnp.sqrt(jnp.maximum(w @ gw, 0.0) + floor)
        return c * g0_norm * (gram / s - jnp.outer(gw, gw) / s**3)

    lipschitz = jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], 1e-12) * (1.0 + c * 10.0)
    init = jnp.full((t,), 1.0 / t, gram.dtype)
    w = _simplex_minimize(grad_fn, init, 1.0 / lipschitz, iterations)
    return _polish_on_support(w, objective, grad_fn, hessian)


def _polish_on_support(w, objective, grad_fn, hessian, steps: int = 4) -> jax.Array:
    """Newton steps on the KKT system of the simplex restricted to ``w``'s support (the
    coordinates the first-order solver left above 1e-6): first-order methods stop at a few
    1e-5 of the optimum, Newton reaches float precision in a step or two. Kept only if the
    result stays on the simplex, is finite and does not raise the objective (beyond
    rounding); otherwise the first-order answer stands (a wrong support, a singular
    Hessian)."""
    t = w.shape[0]
    support = w > 1e-6
    both = support[:, None] & support[None, :]
    ones = support.astype(w.dtype)

    def newton(_, x):
        g = grad_fn(x)
        lam = jnp.sum(g * ones) / jnp.maximum(jnp.sum(ones), 1.0)
        h = jnp.where(both, hessian(x), jnp.eye(t, dtype=x.dtype))
        kkt = jnp.block([[h, -ones[:, None]], [ones[None, :], jnp.zeros((1, 1), x.dtype)]])
        rhs = -jnp.concatenate([jnp.where(support, g - lam, 0.0), (jnp.sum(x) - 1.0)[None]])
        return x + jnp.where(support, jnp.linalg.solve(kkt, rhs)[:t], 0.0)

    polished = jax.lax.fori_loop(0, steps, newton, w)
    # Near the optimum the two objectives differ by rounding: rising by no more than a few
    # ulps counts as not rising (else the better point can lose to noise in the comparison).
    before = objective(w)
    rounding = 8 * jnp.finfo(w.dtype).eps * jnp.abs(before)
    ok = (
        jnp.all(jnp.isfinite(polished))
        & jnp.all(polished >= 0.0)
        & (jnp.abs(jnp.sum(polished) - 1.0) < 1e-4)
        & (objective(polished) <= before + rounding)
    )
    return jnp.where(ok, polished, w)


def box_qp_weights(gram: jax.Array, lower: jax.Array, sweeps: int = 100) -> jax.Array:
    """argmin over ``u >= lower`` of ``u^T G u``, by exact cyclic coordinate descent.

    Each coordinate step solves its one-dimensional box-constrained quadratic in closed form,
    so the iteration is monotone and converges for positive semi-definite ``G``.
    """
    t = gram.shape[0]
    diag = jnp.maximum(jnp.diag(gram), 1e-12)

    def coordinate(k, u):
        grad_k = gram[k] @ u
        return u.at[k].set(jnp.maximum(lower[k], u[k] - grad_k / diag[k]))

    def sweep(_, u):
        return jax.lax.fori_loop(0, t, coordinate, u)

    return jax.lax.fori_loop(0, sweeps, sweep, lower.astype(gram.dtype))


def nash_weights(gram: jax.Array, iterations: int = 30, ridge: float = 1e-6) -> jax.Array:
    """The Nash bargaining solution: ``alpha > 0`` with ``G alpha = 1 / alpha`` (the
    alpha-fair weights of ``fair_weights`` at alpha = 1)."""
    return fair_weights(gram, 1.0, iterations, ridge)


def fair_weights(
    gram: jax.Array, alpha: float, iterations: int = 30, ridge: float = 1e-6
) -> jax.Array:
    """The alpha-fair weights: ``w > 0`` with ``G w = w^(-1/alpha)`` (FairGrad; Nash-MTL's
    bargaining solution at alpha = 1).

    It is the unique minimiser of the strictly convex ``1/2 w^T G w - sum h(w)`` with
    ``h' = w^(-1/alpha)`` (``log`` at alpha = 1); Newton's method with a
    fraction-to-the-boundary step keeps ``w`` positive and converges quadratically. A tiny
    ridge keeps the problem bounded when gradients are dependent.
    """
    t = gram.shape[0]
    g = gram + ridge * jnp.maximum(jnp.trace(gram) / t, 1e-12) * jnp.eye(t, dtype=gram.dtype)
    w = jnp.maximum(jnp.diag(g), 1e-12) ** (-alpha / (alpha + 1.0))

    def body(_, a):
        grad = g @ a - a ** (-1.0 / alpha)
        hess = g + jnp.diag(a ** (-1.0 / alpha - 1.0) / alpha)
        step = jnp.linalg.solve(hess, grad)
        ratio = jnp.where(step > 0, a / jnp.where(step > 0, step, 1.0), jnp.inf)
        size = jnp.minimum(1.0, 0.99 * jnp.min(ratio))
        return a - size * step

    return jax.lax.fori_loop(0, iterations, body, w)
