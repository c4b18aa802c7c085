"""llama.cpp candidate: a GGUF file run in-process by llama.cpp (llama-cpp-python's bindings of its C API).

The same calls as every runtime: `forward` returns the logits of every real token (quality is measured in
llama.cpp itself, against the baseline's logits), `prefill` runs a batch of prompts as parallel sequences
in one decode call and `decode` advances every sequence by one token in one call: how llama-server's
parallel slots share a step. Token ids come from the model's tokenizer outside the timed region, as for
every runtime; the GGUF's own tokenizer serves only the deployed llama-server.

Serving knobs that change cost (`LlamaSettings`): threads for prompt and for generation, the physical
micro-batch, the KV cache type and flash attention; `command_line` renders them as llama-server flags.
"""

from __future__ import annotations

import ctypes
import shutil
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from optimizer.errors import UserError
from optimizer.model import load_model_info, saved_spec
from optimizer.runtimes.base import Candidate, Pair, fresh_folder, run_streams
from optimizer.runtimes.threads import threads

MODEL_FILE = "model.gguf"
IMATRIX_FILE = "imatrix.npz"  # the importance matrix gguf-export computed, kept beside the file it describes
EXTRA = "pip install 'costopt[llamacpp]'"
DECODE_ROOM = 512  # KV positions reserved per sequence beyond its prompt for the tokens it generates
KV_TYPES = {"f16": 1, "q8_0": 8, "f32": 0, "bf16": 30}  # ggml type ids
FLASH = {"auto": -1, "off": 0, "on": 1}  # llama_flash_attn_type

_init_lock = threading.Lock()
_lib: Any = None
_quiet: Any = None  # the log callback must outlive every call that may log
_complaints: deque[str] = deque(maxlen=4)  # llama.cpp's latest warnings and errors, for the one-line error
_WARN = 3  # ggml_log_level: DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5


def _keep_complaints(level: int, text: bytes, _user: Any) -> None:
    if level in (_WARN, _WARN + 1):
        line = text.decode(errors="replace").strip()
        if line:
            _complaints.append(line)


def lib() -> Any:
    """llama-cpp-python's C bindings, the backend initialized once; llama.cpp's log is kept off the
    terminal, its warnings and errors only for the error that follows them (`last_complaint`)."""
    global _lib, _quiet
    with _init_lock:
        if _lib is None:
            try:
                import llama_cpp.llama_cpp as ll
            except ImportError as e:
                raise UserError(f"the llama.cpp runtime needs llama-cpp-python ({e})", EXTRA) from None
            ll.llama_backend_init()
            _quiet = ll.llama_log_callback(_keep_complaints)
            ll.llama_log_set(_quiet, ctypes.c_void_p())
            _lib = ll
    return _lib


def forget_complaints() -> None:
    """Start listening afresh: call before the llama.cpp call whose failure `last_complaint` explains."""
    _complaints.clear()


def last_complaint() -> str:
    """What llama.cpp last warned or erred about (for a one-line error), or an empty string."""
    return f" (llama.cpp: {_complaints[-1][:200]})" if _complaints else ""


@dataclass
class LlamaSettings:
    """llama.cpp's serving knobs, as llama-server takes them. None: llama.cpp's default."""

    threads: int | None = None  # generation threads (-t); None: the process's thread count
    threads_batch: int | None = None  # prompt threads (-tb); None: as `threads`
    ubatch: int = 512  # physical micro-batch (-ub)
    kv_cache: Literal["f16", "q8_0"] = "f16"  # KV cache type (-ctk / -ctv)
    flash_attn: Literal["auto", "on", "off"] = "auto"  # (-fa)

    def thread_counts(self) -> tuple[int, int]:
        t = self.threads or threads()
        return t, self.threads_batch or t


def command_line(gguf: str, settings: LlamaSettings, parallel: int, context_per_slot: int) -> str:
    """The llama-server command that serves `gguf` as measured: its threads, slots, micro-batch, KV type."""
    t, tb = settings.thread_counts()
    parts = [
        "llama-server",
        f"-m {gguf}",
        f"-t {t}",
        f"-tb {tb}",
        f"--parallel {parallel}",
        "--cont-batching",
        f"-c {parallel * context_per_slot}",
        f"-ub {settings.ubatch}",
        f"-fa {settings.flash_attn}",
    ]
    if settings.kv_cache != "f16":
        parts.append(f"-ctk {settings.kv_cache} -ctv {settings.kv_cache}")
    return " ".join(parts)


class _Context:
    """One llama_context: `seqs` parallel sequences of up to `per_seq` positions, on fixed thread counts."""

    def __init__(self, model: Any, seqs: int, per_seq: int, n_batch: int, settings: LlamaSettings, n_threads: int) -> None:
        ll = lib()
        p = ll.llama_context_default_params()
        p.n_ctx = seqs * per_seq
        p.n_batch = n_batch
        p.n_ubatch = min(settings.ubatch, n_batch)
        p.n_seq_max = seqs
        p.n_threads = n_threads
        p.n_threads_batch = settings.threads_batch or n_threads
        p.type_k = p.type_v = KV_TYPES[settings.kv_cache]
        p.flash_attn_type = FLASH[settings.flash_attn]
        p.kv_unified = True  # one KV buffer that the sequences share, as llama-server's slots do
        p.no_perf = True
        forget_complaints()
        self.ctx = ll.llama_init_from_model(model, p)
        if not self.ctx:
            raise UserError(
                f"llama.cpp could not create a context of {seqs} x {per_seq} positions ({settings.kv_cache} KV cache)"
                + last_complaint(),
                "lower the batch size or the prompt length, or keep the KV cache at f16",
            )
        self.seqs, self.per_seq, self.n_batch, self.threads = seqs, per_seq, n_batch, n_threads
        self.batch = ll.llama_batch_init(n_batch, 0, seqs)
        self.mem = ll.llama_get_memory(self.ctx)
        self.lock = threading.Lock()

    def close(self) -> None:
        ll = lib()
        if self.ctx:
            ll.llama_batch_free(self.batch)
            ll.llama_free(self.ctx)
            self.ctx = None

    def clear(self) -> None:
        lib().llama_memory_clear(self.mem, True)

    def run(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], want: Sequence[bool]) -> None:
        """One llama_decode over these tokens (at most n_batch), logits kept where `want` is true."""
        ll, b, n = lib(), self.batch, len(tokens)
        np.ctypeslib.as_array(b.token, (n,))[:] = tokens
        np.ctypeslib.as_array(b.pos, (n,))[:] = positions
        np.ctypeslib.as_array(b.n_seq_id, (n,))[:] = 1
        np.ctypeslib.as_array(b.logits, (n,))[:] = want
        for i, s in enumerate(seqs):
            b.seq_id[i][0] = s
        b.n_tokens = n
        rc = ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(
                f"llama_decode returned {rc} for {n} tokens in a context of {self.seqs} x {self.per_seq} positions"
            )

    def logits(self, rows: int, vocab: int) -> np.ndarray:
        """The logits of the last decode's `rows` kept positions, in batch order ([rows, vocab], a copy)."""
        ptr = lib().llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, (rows, vocab)).copy()


@dataclass
class LlamaCppCandidate(Candidate):
    runtime: str = "llamacpp"
    gguf: Path | None = None
    settings: LlamaSettings = field(default_factory=LlamaSettings)
    gguf_info: dict[str, Any] = field(default_factory=dict)  # gguf_file.describe of the file served
    imatrix: Path | None = None  # the importance matrix for llama.cpp's quantizer (saved and cached with the file)
    _model: Any = field(default=None, repr=False)
    _contexts: dict[tuple[int, int], _Context] = field(default_factory=dict, repr=False)
    _vocab: int = 0

    @property
    def model(self) -> Any:
        if self._model is None:
            ll = lib()
            assert self.gguf is not None
            p = ll.llama_model_default_params()
            p.n_gpu_layers = 999 if self.device.startswith("cuda") else 0
            forget_complaints()
            self._model = ll.llama_model_load_from_file(str(self.gguf).encode(), p)
            if not self._model:
                raise UserError(
                    f"llama.cpp could not load {self.gguf}{last_complaint()}", "check the file, or rebuild it with gguf-export"
                )
            self._vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self._model))
        return self._model

    def _context(self, seqs: int, per_seq: int, n_threads: int | None = None, slot: int = 0) -> _Context:
        """A context for `seqs` sequences of at least `per_seq` positions; one kept per (slot, sequences)."""
        model = self.model
        n_threads = n_threads or self.settings.thread_counts()[0]
        key = (slot, seqs)
        ctx = self._contexts.get(key)
        if ctx is None or ctx.per_seq < per_seq or ctx.threads != n_threads:
            if ctx is not None:
                ctx.close()
            per = max(per_seq, 256)
            ctx = self._contexts[key] = _Context(model, seqs, per, min(seqs * per, 2048), self.settings, n_threads)
        return ctx

    def close(self) -> None:
        for ctx in self._contexts.values():
            ctx.close()
        self._contexts.clear()
        if self._model is not None:
            lib().llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # contexts hold the KV cache: free them with the candidate
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ quality
    def _row_logits(self, ctx: _Context, tokens: list[int]) -> np.ndarray:
        ctx.clear()
        out = []
        for s in range(0, len(tokens), ctx.n_batch):
            part = tokens[s : s + ctx.n_batch]
            ctx.run(part, range(s, s + len(part)), [0] * len(part), [True] * len(part))
            out.append(ctx.logits(len(part), self._vocab))
        return np.concatenate(out) if out else np.zeros((0, self._vocab), np.float32)

    def _forward_rows(self, ids: torch.Tensor, mask: torch.Tensor, ctx: _Context) -> torch.Tensor:
        out = np.zeros((ids.shape[0], ids.shape[1], self._vocab), np.float32)
        with ctx.lock:
            for r in range(ids.shape[0]):
                keep = mask[r].bool().numpy()
                out[r, keep] = self._row_logits(ctx, ids[r][keep].tolist())
        return torch.from_numpy(out)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.task != "causal-lm":
            raise UserError("the llama.cpp runtime serves causal LMs only", "use it with task: causal-lm")
        return self._forward_rows(input_ids, attention_mask, self._context(1, input_ids.shape[1]))

    def concurrent(self, batches: Sequence[Pair], streams: int, latencies: list[float] | None) -> list[torch.Tensor]:
        share = max(1, self.settings.thread_counts()[0] // streams)
        width = max(ids.shape[1] for ids, _ in batches)
        ctxs = [self._context(1, width, share, slot=1 + s) for s in range(streams)]
        free = list(ctxs)
        lock = threading.Lock()

        def job(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            with lock:
                ctx = free.pop()
            try:
                return self._forward_rows(ids, mask, ctx)
            finally:
                with lock:
                    free.append(ctx)

        return run_streams([lambda i=i, m=m: job(i, m) for i, m in batches], streams, latencies)

    # ------------------------------------------------------------------ serving
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        rows, width = input_ids.shape
        ctx = self._context(rows, width + DECODE_ROOM)
        ctx.clear()
        lengths = attention_mask.sum(1).tolist()
        tokens, pos, seqs, want = [], [], [], []
        for r in range(rows):
            real = input_ids[r][attention_mask[r].bool()].tolist()  # left- or right-padded alike
            tokens += real
            pos += range(len(real))
            seqs += [r] * len(real)
            want += [False] * (len(real) - 1) + [True]  # the last prompt token's logits start generation
        last = []
        for s in range(0, len(tokens), ctx.n_batch):
            end = s + ctx.n_batch
            ctx.run(tokens[s:end], pos[s:end], seqs[s:end], want[s:end])
            if any(want[s:end]):
                last.append(ctx.logits(sum(want[s:end]), self._vocab))
        return torch.from_numpy(np.concatenate(last)), {"ctx": ctx, "pos": list(lengths)}

    def decode(self, next_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        ctx, pos = state["ctx"], state["pos"]
        rows = next_ids.shape[0]
        if max(pos) >= ctx.per_seq:
            raise UserError(
                f"llama.cpp's context holds {ctx.per_seq} positions per sequence and decoding reached {max(pos)}",
                f"generate at most {DECODE_ROOM} new tokens per measured request",
            )
        ctx.run(next_ids[:, 0].tolist(), pos, range(rows), [True] * rows)
        return torch.from_numpy(ctx.logits(rows, self._vocab)), {"ctx": ctx, "pos": [p + 1 for p in pos]}

    # ------------------------------------------------------------------ artifact
    def save(self, directory: Path) -> Path:
        assert self.gguf is not None
        directory = fresh_folder(directory)
        shutil.copy2(self.gguf, directory / MODEL_FILE)
        if self.imatrix is not None:
            shutil.copy2(self.imatrix, directory / IMATRIX_FILE)
        config = Path(self.info.source) / "config.json"
        if config.is_file():  # the tokenizer's reload reads the model type from it
            shutil.copy2(config, directory / "config.json")
        self.write_common(directory, settings=asdict(self.settings), gguf=self.gguf_info)
        return directory

    def serve_command(self, folder: Path, parallel: int, context_per_slot: int) -> str:
        return command_line(str(Path(folder) / MODEL_FILE), self.settings, parallel, context_per_slot)

    def parameter_counts(self) -> tuple[int, int]:
        from optimizer.gguf_file import tensor_elements

        assert self.gguf is not None
        n = tensor_elements(self.gguf)
        return n, n  # quantized blocks hold no exact zeros to count

    def weight_bytes(self) -> int | None:
        return self.gguf.stat().st_size if self.gguf is not None else None


def load_artifact(directory: Path, meta: dict[str, Any], device: str) -> LlamaCppCandidate:
    info = load_model_info(saved_spec(directory), meta["task"])
    return LlamaCppCandidate(
        info=info,
        device=device,
        gguf=Path(directory) / MODEL_FILE,
        settings=LlamaSettings(**meta.get("settings", {})),
        gguf_info=meta.get("gguf", {}),
        imatrix=matrix if (matrix := Path(directory) / IMATRIX_FILE).is_file() else None,
    )
