"""Staged training: a list of stages in ``config.stages``, each with its own steps, task set,
frozen parameter groups and learning-rate scale for the shared groups.

For example, pre-train the shared embeddings and trunk on all tasks, then fine-tune the
towers with the shared groups frozen::

    c.stages = ml_collections.ConfigDict()
    c.stages.s1_pretrain = dict(steps=2000, tasks=(), frozen=(), shared_lr_scale=1.0)
    c.stages.s2_finetune = dict(steps=1000, tasks=(), frozen=("embeddings", "trunk"),
                                shared_lr_scale=1.0)

Stages run in the sorted order of their names (ConfigDict keeps no insertion order: name
them s1_..., s2_...); their steps add up to ``train.num_steps``. Each
stage has its own optimizer (state started afresh at the stage boundary) and balancing
state over its own tasks; towers of tasks outside a stage are frozen during it. A stage is a
function of the step alone, so a checkpoint's step says which stage it belongs to, and a
resumed run lands in the right one (the meta item records it too). Early stopping acts in
the last stage only; the best validation checkpoint is tracked across all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

FREEZABLE_GROUPS = ("embeddings", "trunk", "heads", "text")
STAGE_KEYS = ("steps", "tasks", "frozen", "shared_lr_scale")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    start: int  # first step (0-based count of steps done when the stage begins)
    end: int  # steps done when it ends
    tasks: tuple[str, ...]
    frozen: frozenset[str]
    shared_lr_scale: float

    @property
    def steps(self) -> int:
        return self.end - self.start


def plan(config: Any) -> tuple[Stage, ...]:
    """The configured stages with their step ranges; one stage of everything if none."""
    all_tasks = tuple(config.tasks)
    stages_config = config.get("stages") or {}
    if not stages_config:
        return (Stage("train", 0, config.train.num_steps, all_tasks, frozenset(), 1.0),)
    out, start = [], 0
    for name, s in sorted(stages_config.items()):
        tasks = tuple(s.get("tasks", ())) or all_tasks
        out.append(
            Stage(
                name,
                start,
                start + int(s["steps"]),
                tasks,
                frozenset(s.get("frozen", ())),
                float(s.get("shared_lr_scale", 1.0)),
            )
        )
        start += int(s["steps"])
    return tuple(out)


def index_at(stages: tuple[Stage, ...], step: int) -> int:
    """Index of the stage that the step after ``step`` completed steps belongs to."""
    for i, stage in enumerate(stages):
        if step < stage.end:
            return i
    return len(stages) - 1


def problems(config: Any) -> list[str]:
    """What is wrong with ``config.stages`` (empty when nothing)."""
    stages_config = config.get("stages") or {}
    errors = []
    for name, s in stages_config.items():
        unknown = sorted(set(s) - set(STAGE_KEYS))
        if unknown:
            errors.append(f"stages.{name}: unknown keys {unknown}; valid: {STAGE_KEYS}")
            continue
        if int(s.get("steps", 0)) < 1:
            errors.append(f"stages.{name}.steps must be >= 1")
        bad = sorted(set(s.get("tasks", ())) - set(config.tasks))
        if bad:
            errors.append(f"stages.{name}.tasks: {bad} are not tasks; valid: {tuple(config.tasks)}")
        bad = sorted(set(s.get("frozen", ())) - set(FREEZABLE_GROUPS))
        if bad:
            errors.append(f"stages.{name}.frozen: unknown groups {bad}; valid: {FREEZABLE_GROUPS}")
        if float(s.get("shared_lr_scale", 1.0)) <= 0:
            errors.append(f"stages.{name}.shared_lr_scale must be > 0")
    total = sum(int(s.get("steps", 0)) for s in stages_config.values())
    if stages_config and total != config.train.num_steps:
        errors.append(
            f"stages: steps add up to {total} but train.num_steps is {config.train.num_steps}; "
            "make them equal"
        )
    return errors
