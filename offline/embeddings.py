"""Pretrained vectors ETL computes as features: item text embeddings and ALS factors.

- **Text** (``etl: {text: {columns: [title, genres]}}``): each item's text columns
  (strings, or lists of strings such as genres or tags) joined into one string and
  embedded by WordLlama, whose weights and tokenizer ship inside its PyPI wheel (no hub
  download; it loads with ``HF_HUB_OFFLINE=1``), cut to ``dim`` coordinates (its
  Matryoshka training keeps the first ones the most informative). Without ``wordllama``
  installed, a hashed bag of words (signed feature hashing of the lowercased tokens,
  L2-normalised) stands in, with a warning. The item feature ``text`` (a vector) is
  what an item with no interactions yet is known by, besides its categorical features.
- **ALS** (``etl: {als: {factors: 32}}``): implicit-feedback matrix factorisation (the
  ``implicit`` package) over the training positives, as the user and item vector
  features ``als`` (users and items absent from training get zeros).

Both are fitted on what ETL may see (item tables; training interactions only), so no
held-out interaction leaks into a feature.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from shared.config import StrictConfig
from shared.errors import ConfigError

__all__ = ["AlsConfig", "TextConfig", "als_vectors", "hashed_bag_of_words", "text_vectors"]

log = logging.getLogger(__name__)


class TextConfig(StrictConfig):
    columns: tuple[str, ...] = ()  # item columns whose text is embedded; () = none
    dim: Literal[64, 128, 256] = 64
    encoder: Literal["wordllama", "hashed"] = "wordllama"


class AlsConfig(StrictConfig):
    factors: int = Field(0, ge=0, description="ALS factors as user and item features; 0: none")
    iterations: int = Field(15, ge=1)
    regularization: float = Field(0.05, ge=0)
    alpha: float = Field(1.0, gt=0, description="confidence weight of a positive")
    seed: int = 0


_TOKEN = re.compile(r"\w+")


def item_texts(items: pl.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """One string per item row: its ``columns`` (lists joined by spaces), space-joined."""
    missing = [c for c in columns if c not in items.columns]
    if missing:
        raise ConfigError(f"etl.text.columns: the items table has no column {missing[0]!r}")
    parts = []
    for c in columns:
        col = pl.col(c)
        if isinstance(items.schema[c], pl.List):
            col = col.list.eval(pl.element().cast(pl.String)).list.join(" ")
        parts.append(col.cast(pl.String).fill_null(""))
    return items.select(pl.concat_str(parts, separator=" ").alias("t"))["t"].to_list()


def hashed_bag_of_words(texts: list[str], dim: int) -> np.ndarray:
    """``(N, dim)`` float32: signed feature hashing of lowercased word tokens, L2-normalised."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for token in _TOKEN.findall(text.lower()):
            h = zlib.crc32(token.encode())
            out[row, h % dim] += 1.0 if (h >> 31) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def _wordllama(dim: int) -> object | None:
    """WordLlama from the files inside its wheel, or None when it is not installed."""
    try:
        import wordllama  # noqa: PLC0415  (optional)
        from safetensors import safe_open  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415
        from wordllama.inference import WordLlamaInference  # noqa: PLC0415
    except ImportError:
        return None
    # read the packaged files directly: its loader looks for the tokenizer in the wrong
    # folder and then tries the network
    root = Path(wordllama.__file__).parent
    tokenizer = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
    with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np") as f:
        weights = f.get_tensor("embedding.weight")[:, :dim]
    return WordLlamaInference(np.ascontiguousarray(weights), tokenizer)


def text_vectors(items: pl.DataFrame, config: TextConfig) -> tuple[np.ndarray, str]:
    """``(I, dim)`` float32 text embeddings of the items table's rows, and the encoder used."""
    texts = item_texts(items, config.columns)
    model = _wordllama(config.dim) if config.encoder == "wordllama" else None
    if model is None:
        if config.encoder == "wordllama":
            log.warning(
                "wordllama is not installed (pip install wordllama): item text is embedded "
                "as a hashed bag of words instead"
            )
        return hashed_bag_of_words(texts, config.dim), "hashed"
    vectors = np.asarray(model.embed(texts, norm=True), dtype=np.float32)  # type: ignore[attr-defined]
    return vectors, "wordllama"


def als_vectors(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, config: AlsConfig
) -> tuple[np.ndarray, np.ndarray]:
    """ALS factors of the positives ``(users[k], items[k])`` (table rows from 0):
    ``(n_users, F)`` and ``(n_items, F)`` float32.

    Raises:
        ConfigError: ``implicit`` is not installed.
    """
    try:
        from implicit.cpu.als import AlternatingLeastSquares  # noqa: PLC0415  (optional)
        from scipy.sparse import csr_matrix  # noqa: PLC0415
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        raise ConfigError("etl.als needs the implicit package (pip install implicit)") from None
    matrix = csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items)
    )
    matrix.sum_duplicates()
    with threadpool_limits(1, "blas"):  # implicit's own loop is the parallel part
        model = AlternatingLeastSquares(
            factors=config.factors,
            iterations=config.iterations,
            regularization=config.regularization,
            alpha=config.alpha,
            random_state=config.seed,
            num_threads=1,
        )
        model.fit(matrix, show_progress=False)
    return np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)
