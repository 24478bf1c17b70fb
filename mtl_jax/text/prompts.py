"""Prompts for an LM trunk: every example as the text a language model reads.

A prompt is the user's profile, the user's last ``history`` interactions of the train split
that came before the example (in time order, oldest first; never the example itself, so a
training row's prompt never holds its own label), and the candidate item::

    User: A 24-year-old male technician. Watched: Toy Story (1995); Heat (1995);
    Candidate: Jumanji (1995).

Each piece is tokenised once (per user, per item) and the pieces are joined as token ids,
between the model's own special tokens. Too long for ``max_tokens``: the oldest history
items go first, then the profile is cut, and only a candidate text longer than the whole
budget is itself cut (its start is kept). Every split is padded to one length, the
power-of-two bucket that holds the longest prompt (at most ``max_tokens``); the columns
``prompt`` (N, L) int32 and ``prompt/length`` (N,) int32 join the split's features.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtl_jax.data.schema import MultiTaskDataset, Split
from mtl_jax.errors import UserError
from mtl_jax.text.encoder import bucket_length

log = logging.getLogger("mtl_jax")

PROMPT = "prompt"
PROMPT_LENGTH = "prompt/length"
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class PromptPieces:
    """Token ids of each prompt piece: per user, per history item, per candidate item."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    user: list[list[int]]  # "User: <profile>." by user id ([] without user text)
    watched: list[int]  # " Watched:"
    history: list[list[int]]  # " <title>;" by item id
    candidate: list[list[int]]  # " Candidate: <title>." by item id


def prompt_pieces(dataset: MultiTaskDataset, tokenizer: Any) -> PromptPieces:
    """Tokenises each user's and each item's pieces once."""
    if not dataset.item_text:
        raise UserError(
            f"model.trunk='llm' needs item text; dataset {dataset.name!r} has none (its "
            "prompts describe the candidate item in words)"
        )
    items = dataset.item_text
    users = dataset.user_text
    encode = tokenizer.encode
    return PromptPieces(
        prefix=tuple(tokenizer.prefix),
        suffix=tuple(tokenizer.suffix),
        user=encode([f"User: {u}." if u else "" for u in users]) if users else [],
        watched=encode([" Watched:"])[0],
        history=encode([f" {t};" for t in items]),
        candidate=encode([f" Candidate: {t}." for t in items]),
    )


def assemble(
    pieces: PromptPieces, user: int, history: Sequence[int], item: int, max_tokens: int
) -> list[int]:
    """One prompt's token ids, truncated to ``max_tokens`` as the module docstring says."""
    budget = max_tokens - len(pieces.prefix) - len(pieces.suffix)
    candidate = pieces.candidate[item][: max(budget, 0)]
    budget -= len(candidate)
    profile = pieces.user[user] if pieces.user else []
    history = [pieces.history[i] for i in history]
    while history and len(profile) + len(pieces.watched) + sum(map(len, history)) > budget:
        history.pop(0)  # the oldest first
    middle = (pieces.watched + [t for h in history for t in h]) if history else []
    profile = profile[: max(budget - len(middle), 0)]
    return [*pieces.prefix, *profile, *middle, *candidate, *pieces.suffix]


def _histories(
    dataset: MultiTaskDataset, history: int
) -> tuple[dict[int, tuple[list, list]], dict[str, np.ndarray]]:
    """Per user, the train split's (sort keys, item ids) in time order; and each split's
    row sort keys. Keys are (time, item id), as the temporal split orders ties; without
    times the train split's row order stands in for time (logged)."""
    times = dataset.times
    if history and not all(s in times for s in SPLITS):
        log.warning(
            "dataset %s has no event times: prompt histories follow the train split's row "
            "order, and validation / test rows see the whole train history", dataset.name,
        )  # fmt: skip
    keys = {}
    for name in SPLITS:
        split = dataset.split(name)
        if name in times:
            keys[name] = np.stack([times[name], split.features["item_id"]], 1).astype(np.int64)
        else:
            n = len(split)
            offset = 0 if name == "train" else 1 << 62  # after every train row
            keys[name] = np.stack([np.arange(n) + offset, np.zeros(n)], 1).astype(np.int64)
    per_user: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
    train = dataset.train.features
    order = np.lexsort((keys["train"][:, 1], keys["train"][:, 0]))
    for row in order:
        entry = per_user[int(train["user_id"][row])]
        entry[0].append(tuple(keys["train"][row]))
        entry[1].append(int(train["item_id"][row]))
    return per_user, keys


def build_prompts(
    dataset: MultiTaskDataset, tokenizer: Any, history: int, max_tokens: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (tokens (N, L) int32, lengths (N,) int32)}`` for the three splits."""
    for name in SPLITS:
        split = dataset.split(name)
        if not isinstance(split, Split):
            raise UserError("model.trunk='llm' needs the splits in memory, not streamed")
        missing = [f for f in ("user_id", "item_id") if f not in split.features]
        if missing:
            raise UserError(f"model.trunk='llm' builds prompts from {missing}; the data lacks them")
    pieces = prompt_pieces(dataset, tokenizer)
    per_user, keys = _histories(dataset, history)
    rows: dict[str, list[list[int]]] = {}
    for name in SPLITS:
        f = dataset.split(name).features
        out = []
        for user, item, key in zip(f["user_id"], f["item_id"], keys[name], strict=True):
            sorted_keys, items = per_user.get(int(user), ((), ()))
            before = bisect.bisect_left(sorted_keys, tuple(key)) if history else 0
            past = items[max(0, before - history) : before]
            out.append(assemble(pieces, int(user), past, int(item), max_tokens))
        rows[name] = out
    longest = max((len(r) for split_rows in rows.values() for r in split_rows), default=1)
    length = bucket_length(longest, max_tokens)
    result = {}
    for name, split_rows in rows.items():
        tokens = np.zeros((len(split_rows), length), np.int32)
        lengths = np.zeros(len(split_rows), np.int32)
        for i, r in enumerate(split_rows):
            tokens[i, : len(r)] = r
            lengths[i] = len(r)
        result[name] = (tokens, lengths)
    return result


def with_prompts(
    dataset: MultiTaskDataset, tokenizer: Any, history: int, max_tokens: int
) -> MultiTaskDataset:
    """The dataset with the ``prompt`` and ``prompt/length`` columns in every split."""
    built = build_prompts(dataset, tokenizer, history, max_tokens)
    splits = {}
    for name, (tokens, lengths) in built.items():
        split = dataset.split(name)
        features = {**split.features, PROMPT: tokens, PROMPT_LENGTH: lengths}
        splits[name] = dataclasses.replace(split, features=features)
    train_lengths = built["train"][1]
    log.info(
        "prompts: %d tokens per row (padded), train mean %.1f, max %d",
        built["train"][0].shape[1], train_lengths.mean(), train_lengths.max(),
    )  # fmt: skip
    return dataclasses.replace(dataset, **splits)
