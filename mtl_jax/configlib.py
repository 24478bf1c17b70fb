"""Config checks that fail before any data is built or anything compiles.

ml_collections' locked configs already reject unknown keys (with a "did you mean"); these
checks reject bad values and name the allowed choices.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import pathlib
import re
from typing import Any

import ml_collections

from mtl_jax import balancing, parallel, ranking
from mtl_jax import stages as stages_lib
from mtl_jax.balancing.config import rule_from_config
from mtl_jax.data import DATASETS, MultiTaskDataset, negatives
from mtl_jax.data.schema import TEXT_FEATURES
from mtl_jax.errors import ConfigError
from mtl_jax.models import TRUNKS, stacked_grads
from mtl_jax.models.embedding import EMBEDDING_DTYPES
from mtl_jax.models.lm_trunk import POOLINGS
from mtl_jax.optim import EMBEDDING_OPTIMIZERS, SCHEDULES
from mtl_jax.step import TASK_GRADIENT_MODES, gramian_option_problem
from mtl_jax.tasks import METRICS, with_loss_options
from mtl_jax.text.decoder import LORA_TARGETS
from mtl_jax.text.lm import PRESETS


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}: {message}")


def _positive_ints(key: str, values: Any) -> None:
    _require(
        all(isinstance(v, int) and v > 0 for v in values),
        key,
        f"every width must be a positive int, got {tuple(values)}",
    )


def _walk(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a config (tuples' items as ``key[i]``)."""
    out = []
    if isinstance(node, (ml_collections.ConfigDict, dict)):
        for k in node:
            out += _walk(node[k], f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, (tuple, list)):
        for i, v in enumerate(node):
            out += _walk(v, f"{prefix}[{i}]")
    else:
        out.append((prefix, node))
    return out


def _check_finite(config: ml_collections.ConfigDict) -> None:
    """No config value is NaN or infinite: none has a meaning for one."""
    for key, value in _walk(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config.{key}: must be a finite number, got {value}")


def _in_range(value: Any, low: float, high: float, low_open: bool, high_open: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below


def _range(config: Any, key: str, low: float, high: float, interval: str) -> None:
    """``interval`` is how the range reads: '(0, 1)', '[0, 1)', '[0, inf)' ..."""
    value = config
    for part in key.split("."):
        value = value[part]
    ok = _in_range(value, low, high, interval[0] == "(", interval[-1] == ")")
    _require(ok, key, f"must lie in {interval}, got {value!r}")


# Data-section keys by what their name promises (every dataset builder follows these names).
_DATA_RULES: tuple[tuple[str, float, float, str], ...] = (
    (r"^num_", 1, math.inf, "[1, inf)"),
    (r"(^|_)dim$", 1, math.inf, "[1, inf)"),
    (r"^(val|test)_fraction$", 0, 1, "(0, 1)"),
    (r"^cold_item_fraction$", 0, 0.5, "[0, 0.5)"),
    (r"(_rate|^purchase_given_click)$", 0, 1, "(0, 1)"),
    (r"(_noise|_std|^scale|_scale|_decay|_boost|_affinity)$", 0, math.inf, "[0, inf)"),
    (r"(^|_)correlation$", -1, 1, "[-1, 1]"),
)


def _validate_data(config: ml_collections.ConfigDict) -> None:
    data = config.data
    for key in data:
        for pattern, low, high, interval in _DATA_RULES:
            if re.search(pattern, key):
                _range(config, f"data.{key}", low, high, interval)
                break
    if "val_fraction" in data and "test_fraction" in data:
        _require(
            data.val_fraction + data.test_fraction < 1,
            "data.val_fraction",
            f"val_fraction + test_fraction must be < 1 (something must train), got "
            f"{data.val_fraction} + {data.test_fraction}",
        )
    if data.get("data_dir"):
        path = pathlib.Path(data.data_dir).expanduser()
        _require(
            path.is_dir(),
            "data.data_dir",
            f"{str(path)!r} is not a directory (leave it empty to use the verified cache)",
        )


def _validate_optim(config: ml_collections.ConfigDict) -> None:
    for key in ("learning_rate", "embedding_learning_rate"):
        _range(config, f"optim.{key}", 0, math.inf, "(0, inf)")
    for key in ("b1", "b2"):
        _range(config, f"optim.{key}", 0, 1, "[0, 1)")
    for key in ("weight_decay", "embedding_l2", "grad_clip_norm"):
        _range(config, f"optim.{key}", 0, math.inf, "[0, inf)")
    o = config.optim
    _require(o.schedule in SCHEDULES, "optim.schedule", f"{o.schedule!r}; valid: {SCHEDULES}")
    _range(config, "optim.end_fraction", 0, 1, "[0, 1]")
    _range(config, "optim.decay_rate", 0, 1, "(0, 1]")
    _range(config, "optim.step_factor", 0, 1, "(0, 1]")
    _require(o.decay_steps >= 0, "optim.decay_steps", f"must be >= 0, got {o.decay_steps}")
    bounds = tuple(o.step_boundaries)
    _require(
        all(0 < b < 1 for b in bounds) and list(bounds) == sorted(set(bounds)),
        "optim.step_boundaries",
        f"must be increasing fractions in (0, 1) of the steps after warmup, got {bounds}",
    )


def _validate_weights(config: ml_collections.ConfigDict) -> None:
    weights = config.balancing.weights
    for name in weights:
        _range(config, f"balancing.weights.{name}", 0, math.inf, "[0, inf)")
    run = [float(weights.get(t, 1.0)) for t in config.tasks]
    _require(
        config.balancing.method != "static" or sum(run) > 0,
        "balancing.weights",
        f"the weights of the run's tasks {list(config.tasks)} are all 0: nothing would train",
    )
    for task in config.task_loss:
        section = config.task_loss[task]
        _range(config, f"task_loss.{task}.pos_weight", 0, math.inf, "(0, inf)")
        _range(config, f"task_loss.{task}.focal_gamma", 0, math.inf, "[0, inf)")
        _range(config, f"task_loss.{task}.negative_rate", 0, 1, "(0, 1]")
        _require(
            all(_in_range(w, 0, math.inf, True, True) for w in section.class_weights),
            f"task_loss.{task}.class_weights",
            f"every class weight must be > 0, got {tuple(section.class_weights)}",
        )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks values that would otherwise fail late (or silently train something else)."""
    m, o, t = config.model, config.optim, config.train
    _check_finite(config)
    _validate_data(config)
    _validate_optim(config)
    _validate_weights(config)
    _require(config.data.name in DATASETS, "data.name", f"{config.data.name!r}; valid: {DATASETS}")
    trunks = (*TRUNKS, LM_TRUNK)
    _require(m.trunk in trunks, "model.trunk", f"unknown trunk {m.trunk!r}; valid: {trunks}")
    if m.trunk == LM_TRUNK:
        _validate_llm(config)
    for key in ("num_experts", "num_task_experts", "num_levels"):
        _require(m[key] >= 1, f"model.{key}", f"must be >= 1, got {m[key]}")
    _require(
        m.num_shared_experts >= 0,
        "model.num_shared_experts",
        f"must be >= 0, got {m.num_shared_experts}",
    )
    _require(
        0.0 <= m.cross_stitch_self_weight <= 1.0,
        "model.cross_stitch_self_weight",
        f"must lie in [0, 1], got {m.cross_stitch_self_weight}",
    )
    _require(m.embed_dim >= 1, "model.embed_dim", f"must be >= 1, got {m.embed_dim}")
    _positive_ints("model.trunk_hidden", m.trunk_hidden)
    _require(len(m.trunk_hidden) >= 1, "model.trunk_hidden", "needs at least one layer")
    _positive_ints("model.tower_hidden", m.tower_hidden)
    _require(0.0 <= m.dropout < 1.0, "model.dropout", f"must lie in [0, 1), got {m.dropout}")
    _require(
        0.0 <= m.id_dropout < 1.0, "model.id_dropout", f"must lie in [0, 1), got {m.id_dropout}"
    )
    unknown = sorted(set(m.id_dropout_features) - set(config.input_features))
    _require(
        not unknown or m.id_dropout == 0,
        "model.id_dropout_features",
        f"{unknown} are not input features; valid: {list(config.input_features)}",
    )
    _require(
        m.embedding_dtype in EMBEDDING_DTYPES,
        "model.embedding_dtype",
        f"{m.embedding_dtype!r}; valid: {EMBEDDING_DTYPES}",
    )
    _require(
        o.embedding_optimizer in EMBEDDING_OPTIMIZERS,
        "optim.embedding_optimizer",
        f"{o.embedding_optimizer!r}; valid: {EMBEDDING_OPTIMIZERS}",
    )
    _require(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    for key in ("batch_size", "eval_batch_size", "num_steps", "eval_every", "log_every"):
        _require(t[key] >= 1, f"train.{key}", f"must be >= 1, got {t[key]}")
    _require(
        t.checkpoint_every >= 1 and t.checkpoint_every % t.eval_every == 0,
        "train.checkpoint_every",
        f"must be a positive multiple of train.eval_every={t.eval_every} (checkpoints are "
        f"written after validation), got {t.checkpoint_every}",
    )
    _require(t.patience >= 1, "train.patience", f"must be >= 1, got {t.patience}")
    k = t.steps_per_dispatch
    _require(k >= 1, "train.steps_per_dispatch", f"must be >= 1, got {k}")
    _require(
        config.balancing.method in balancing.names(),
        "balancing.method",
        f"unknown method {config.balancing.method!r}; valid: {balancing.names()}",
    )
    _require(
        config.balancing.task_gradients in TASK_GRADIENT_MODES,
        "balancing.task_gradients",
        f"{config.balancing.task_gradients!r}; valid: {TASK_GRADIENT_MODES}",
    )
    gramian_params, gramian_at = config.balancing.gramian_params, config.balancing.gramian_at
    if config.balancing.task_gradients == "stacked":
        problem = stacked_grads.stacked_problem(config.model, gramian_params)
        _require(problem is None, "balancing.task_gradients", f"'stacked' {problem}")
    if gramian_at != "trunk" or gramian_params:
        method = config.balancing.method  # its name was checked above
        rule = balancing.make_rule(method, **({"weights": [1.0]} if method == "static" else {}))
        problem = gramian_option_problem(rule, gramian_params, gramian_at)
        if problem:
            raise ConfigError(f"config.balancing.{problem[0]}: {problem[1]}")
    if gramian_params:
        try:
            re.compile(gramian_params)
        except re.error as e:
            raise ConfigError(f"balancing.gramian_params: {gramian_params!r}: {e}") from e
    _require(config.mesh.num_devices >= 0, "mesh.num_devices", "must be >= 0 (0: all)")
    _require(config.mesh.model >= 1, "mesh.model", f"must be >= 1, got {config.mesh.model}")
    try:
        parallel.check_axis_rules(dict(config.mesh.axis_rules))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    _require(
        config.text.mode in TEXT_MODES,
        "text.mode",
        f"unknown mode {config.text.mode!r}; valid: {TEXT_MODES}",
    )
    text_columns = tuple(n for n, f in config.get("features", {}).items() if f.kind == "text")
    for name in config.text.features:
        _require(
            name in TEXT_FEATURES + text_columns,
            "text.features",
            f"no text for {name!r}; valid: {TEXT_FEATURES + text_columns}",
        )
    mode = config.ranking.get("fusion_mode", "sum")
    valid = ranking.FUSION_MODES
    _require(mode in valid, "ranking.fusion_mode", f"{mode!r}; valid: {valid}")
    _require(config.text.encode_batch_size >= 1, "text.encode_batch_size", "must be >= 1")
    _require(config.text.finetune_layers >= 0, "text.finetune_layers", "must be >= 0")
    _require(config.text.finetune_learning_rate > 0, "text.finetune_learning_rate", "must be > 0")
    if config.data.name == "movielens" and config.data.get("genres_in_text", False):
        _require(
            "genre" not in config.tasks,
            "data.genres_in_text",
            "genres are a prediction target here; putting them in the text leaks the labels",
        )
    _require(0.0 <= config.distill.alpha <= 1.0, "distill.alpha", "must lie in [0, 1]")
    _require(config.distill.temperature > 0, "distill.temperature", "must be > 0")
    stage_errors = stages_lib.problems(config)
    if stage_errors:
        raise ConfigError("; ".join(stage_errors))
    cv = config.cv
    _require(
        cv.folds == 0 or (cv.folds >= 2 and 0 <= cv.fold < cv.folds),
        "cv",
        f"folds must be 0 (off) or >= 2 with 0 <= fold < folds; got folds={cv.folds}, "
        f"fold={cv.fold}",
    )
    r = config.regularization
    for kind, groups in (("l1", r.l1), ("l2", r.l2)):
        for group, strength in groups.items():
            _require(
                strength >= 0, f"regularization.{kind}.{group}", f"must be >= 0, got {strength}"
            )
    _require(r.embedding_norm >= 0, "regularization.embedding_norm", "must be >= 0")
    g = config.guards
    _require(
        isinstance(g.max_skipped_steps, int) and g.max_skipped_steps >= 0,
        "guards.max_skipped_steps",
        f"must be an int >= 0 (0 stops at the first non-finite step), got {g.max_skipped_steps}",
    )
    _require(
        g.divergence_factor == 0
        or (math.isfinite(g.divergence_factor) and g.divergence_factor > 1),
        "guards.divergence_factor",
        f"must be 0 (off) or a finite number > 1, got {g.divergence_factor}",
    )
    _require(
        g.divergence_window >= 1,
        "guards.divergence_window",
        f"must be >= 1, got {g.divergence_window}",
    )
    _range(config, "metrics.threshold", 0, 1, "(0, 1)")
    _require(len(config.tasks) >= 1, "tasks", "needs at least one task")
    _require(len(set(config.tasks)) == len(config.tasks), "tasks", f"duplicates in {config.tasks}")


TEXT_MODES = ("frozen", "finetune")
LM_TRUNK = "llm"


def _validate_llm(config: ml_collections.ConfigDict) -> None:
    """The ``llm`` section, and what an LM trunk cannot be combined with."""
    c = config.llm
    valid = sorted(PRESETS)
    _require(not c.preset or c.preset in PRESETS, "llm.preset", f"{c.preset!r}; valid: {valid}")
    _require(c.history >= 0, "llm.history", f"must be >= 0, got {c.history}")
    _require(c.max_tokens >= 8, "llm.max_tokens", f"must be >= 8, got {c.max_tokens}")
    _require(c.pooling in POOLINGS, "llm.pooling", f"{c.pooling!r}; valid: {POOLINGS}")
    _require(c.dtype in EMBEDDING_DTYPES, "llm.dtype", f"{c.dtype!r}; valid: {EMBEDDING_DTYPES}")
    _require(c.lora.rank >= 1, "llm.lora.rank", f"must be >= 1, got {c.lora.rank}")
    _require(c.lora.layers >= 0, "llm.lora.layers", f"must be >= 0, got {c.lora.layers}")
    unknown = sorted(set(c.lora.targets) - set(LORA_TARGETS))
    _require(
        bool(c.lora.targets) and not unknown,
        "llm.lora.targets",
        f"{tuple(c.lora.targets)} (unknown: {unknown}); valid: {LORA_TARGETS}",
    )
    _require(
        not config.optim.sparse_embedding_updates,
        "optim.sparse_embedding_updates",
        "is for id tables; an LM trunk's step runs on the whole model (set it False)",
    )
    _require(
        not config.text.features,
        "text.features",
        "text features feed id trunks; model.trunk='llm' reads the text itself (set it ())",
    )
    _require(
        not config.ranking.enabled,
        "ranking.enabled",
        "top-k over the catalogue needs prompts of unobserved pairs, which model.trunk='llm' "
        "does not build yet (set it False)",
    )


def validate_against_dataset(config: ml_collections.ConfigDict, dataset: MultiTaskDataset) -> None:
    """Checks the names in the config against what the dataset provides."""
    for name in config.text.features:
        try:
            dataset.text_for(name)
        except ValueError as e:
            raise ConfigError(f"text.features: {e}") from e
    task_kinds = {task.name: task.kind for task in dataset.tasks}
    feature_names = [f.name for f in dataset.features]
    for name in config.tasks:
        _require(name in task_kinds, "tasks", f"unknown task {name!r}; valid: {list(task_kinds)}")
    for name in config.input_features:
        _require(
            name in feature_names,
            "input_features",
            f"unknown feature {name!r}; valid: {feature_names}",
        )
        _require(
            name not in config.tasks,
            "input_features",
            f"{name!r} is also a prediction target; withhold it from the inputs",
        )
    group = config.metrics.gauc_group
    _require(
        group in ("auto", "") or group in feature_names,
        "metrics.gauc_group",
        f"unknown feature {group!r}; valid: 'auto', '' (none) or one of {feature_names}",
    )
    for name in config.tasks:
        try:
            with_loss_options(
                next(t for t in dataset.tasks if t.name == name), config.task_loss[name]
            )
        except ValueError as e:
            raise ConfigError(f"config.task_loss.{name}: {e}") from e
    ctr, ctcvr = config.model.esmm_ctr_task, config.model.esmm_ctcvr_task
    if ctr or ctcvr:
        binary = [t for t in config.tasks if task_kinds.get(t) == "binary"]
        _require(
            ctr in binary and ctcvr in binary and ctr != ctcvr,
            "model.esmm_ctr_task",
            f"ESMM needs two different binary tasks of this run (esmm_ctr_task={ctr!r}, "
            f"esmm_ctcvr_task={ctcvr!r}); binary tasks: {binary}",
        )
    metric = config.train.early_stopping_metric
    task, _, name = metric.partition("/")
    valid = [f"{t}/{m}" for t in config.tasks for m in METRICS[task_kinds[t]]]
    _require(metric in valid, "train.early_stopping_metric", f"{metric!r}; valid: {valid}")
    problems = ranking.check_config(
        config.ranking, [t for t in dataset.tasks if t.name in config.tasks]
    )
    _require(not problems, "ranking", "; ".join(problems))
    if "negatives" in config:
        problems = negatives.check_config(config.negatives, dataset, tuple(config.tasks))
        _require(not problems, "negatives", "; ".join(problems))
        _require(
            not config.negatives.task or config.model.trunk != LM_TRUNK,
            "negatives.task",
            "negative rows need prompts of unobserved pairs, which model.trunk='llm' does "
            "not build (set it '')",
        )
    _require(
        not config.ranking.enabled or dataset.catalogue is not None,
        "ranking.enabled",
        f"dataset {dataset.name!r} has no item catalogue to rank over",
    )
    try:
        rule_from_config(config.balancing, list(config.tasks), list(config.tasks))
    except ValueError as e:
        raise ConfigError(f"config.balancing: {e}") from e


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` the way ``--config`` does."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_mtl_jax_config", path)
    if module_spec is None or not pathlib.Path(path).is_file():
        raise ConfigError(f"--config: no config file at {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure to import is the file's problem
        raise ConfigError(f"--config: {path} does not load: {type(e).__name__}: {e}") from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(
            f"--config: {path} defines no get_config(arg=None) function (see configs/*.py)"
        )
    try:
        config = get_config(arg or None)
    except (KeyError, ValueError) as e:  # configs raise these for an unknown variant
        raise ConfigError(f"--config: {spec}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"--config: {path}'s get_config returned {type(config).__name__}, "
            "not an ml_collections.ConfigDict"
        )
    return config


def check_override_keys(config: ml_collections.ConfigDict, argv: list[str]) -> None:
    """Fails on ``--config.a.b=...`` overrides whose key the config lacks, listing the keys
    that do exist at that level (the flag parser's own error only guesses one near match)."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        check_key(config, arg[len("--config.") :].split("=", 1)[0], f"from {arg.split('=', 1)[0]}")


def check_key(config: ml_collections.ConfigDict, dotted: str, source: str) -> None:
    """Fails on a dotted key (``model.trunk``) the config lacks, naming the keys that exist
    at that level; ``source`` says where the key came from."""
    node, walked = config, "config"
    for part in dotted.split("."):
        keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        if part not in keys:
            near = difflib.get_close_matches(part, keys, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ConfigError(
                f"unknown config key {walked}.{part} ({source}); valid keys of {walked}: "
                f"{sorted(keys) or '(none: it is a value)'}.{hint}"
            )
        node, walked = node[part], f"{walked}.{part}"


def data_seed(config: ml_collections.ConfigDict) -> int:
    """The seed the dataset is drawn with: ``config.data_seed``, or ``config.seed`` if -1."""
    value = config.get("data_seed", -1)
    return config.seed if value < 0 else value


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-compatible dict (tuples become lists) for config.json and checkpoints."""
    return json.loads(config.to_json_best_effort())
