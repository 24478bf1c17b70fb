"""Task balancing: how T task losses and task gradients become one update.

  make(name, num_tasks, **kwargs) -> optax.GradientTransformationExtraArgs
  make_rule(name, **kwargs)       -> WeightingRule (what the trainer uses)
  names()                         -> every method's name

See ``core`` for the contract. Loss-weighting methods (``LOSS_METHODS``) never need per-task
gradients; gradient methods (``GRADIENT_METHODS``) read their Gramian.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import optax

from mtl_jax.balancing import gradient_methods, loss_weighting
from mtl_jax.balancing.core import (
    CombinerState,
    WeightingRule,
    as_transform,
    combine_task_grads,
    compute_weights,
    gramian,
    init_state,
    task_sum,
    weighted_sum,
)

_FACTORIES: dict[str, Callable[..., WeightingRule]] = {
    "ew": loss_weighting.ew,
    "static": loss_weighting.static,
    "uw": loss_weighting.uw,
    "dwa": loss_weighting.dwa,
    "rlw": loss_weighting.rlw,
    "famo": loss_weighting.famo,
    "imtl_l": loss_weighting.imtl_l,
    "geometric_mean": loss_weighting.geometric_mean,
    "stch": loss_weighting.stch,
    "gradnorm": gradient_methods.gradnorm,
    "pcgrad": gradient_methods.pcgrad,
    "gradvac": gradient_methods.gradvac,
    "cagrad": gradient_methods.cagrad,
    "mgda": gradient_methods.mgda,
    "imtl_g": gradient_methods.imtl_g,
    "aligned_mtl": gradient_methods.aligned_mtl,
    "nash_mtl": gradient_methods.nash_mtl,
    "upgrad": gradient_methods.upgrad,
    "dualproj": gradient_methods.dualproj,
    "config": gradient_methods.config,
    "fairgrad": gradient_methods.fairgrad,
    "graddrop": gradient_methods.graddrop,
    "modo": gradient_methods.modo,
    "sdmgrad": gradient_methods.sdmgrad,
    "excess_mtl": gradient_methods.excess_mtl,
    "moco": gradient_methods.moco,
    "db_mtl": gradient_methods.db_mtl,
}
LOSS_METHODS = ("ew", "static", "uw", "dwa", "rlw", "famo", "imtl_l", "geometric_mean", "stch")
GRADIENT_METHODS = tuple(n for n in _FACTORIES if n not in LOSS_METHODS)


def names() -> tuple[str, ...]:
    """Every method ``make`` accepts."""
    return tuple(_FACTORIES)


def method_kwargs(name: str) -> dict[str, object]:
    """A method's keyword arguments and their defaults (``inspect.Parameter.empty`` if none)."""
    _check_name(name)
    return {p.name: p.default for p in inspect.signature(_FACTORIES[name]).parameters.values()}


def _check_name(name: str) -> None:
    if name not in _FACTORIES:
        raise ValueError(f"unknown balancing method {name!r}; valid: {names()}")


def make_rule(name: str, **kwargs) -> WeightingRule:
    """The weighting rule of method ``name``; unknown kwargs fail, naming the valid ones."""
    _check_name(name)
    valid = method_kwargs(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"balancing method {name!r} takes {sorted(valid) or 'no'} kwargs, not {unknown}"
        )
    return _FACTORIES[name](**kwargs)


def make(
    name: str, num_tasks: int, *, seed: int = 0, **kwargs
) -> optax.GradientTransformationExtraArgs:
    """Method ``name`` as an optax transform over task-leading gradient pytrees."""
    return as_transform(make_rule(name, **kwargs), num_tasks, seed)


__all__ = [
    "GRADIENT_METHODS",
    "LOSS_METHODS",
    "CombinerState",
    "WeightingRule",
    "as_transform",
    "combine_task_grads",
    "compute_weights",
    "gramian",
    "init_state",
    "make",
    "make_rule",
    "method_kwargs",
    "names",
    "task_sum",
    "weighted_sum",
]
