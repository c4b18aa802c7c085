"""GGUF files as a model source (llama.cpp's format, as llama-server, ollama and LM Studio serve it).

`model.source` may be a `.gguf` file, a folder holding exactly one, or an installed package that ships
one (found without importing the package: a package's `__init__` may import things that are not there).
The file is materialized once as a Hugging Face folder (config, tokenizer with its chat template, fp32
safetensors) under the user's cache, which every torch, ONNX Runtime and OpenVINO chain loads like any
folder; the file itself stays the llama.cpp runtime's starting point and is named in every result.

A GGUF quantized to 4 bits dequantizes to weights on that 4-bit grid: the torch baseline of such a file is
that quantized model in fp32, not the original checkpoint. `describe` says which it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from optimizer.errors import UserError

SUFFIX = ".gguf"
INFO_FILE = "gguf-source.json"  # in a materialized folder: which file it came from
FORMAT = 2  # of a materialized folder: bumped when what materialize writes changes, so old folders are rebuilt
FLOAT_TYPES = ("F32", "F16", "BF16")


def cache_root() -> Path:
    """Where materialized GGUF folders live (COSTOPT_CACHE, else XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("COSTOPT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "costopt")
    return Path(base) / "gguf"


def _one_in(folder: Path, what: str) -> Path | None:
    files = sorted(folder.glob(f"*{SUFFIX}"))
    if len(files) > 1:
        raise UserError(
            f"{what} holds {len(files)} GGUF files ({', '.join(f.name for f in files[:4])})",
            "set model.source to the one file to use",
        )
    return files[0] if files else None


def find_gguf(source: str) -> Path | None:
    """The GGUF file `source` names, or None when it names something else (a HF folder, a hub id)."""
    p = Path(source)
    if p.is_file() and p.suffix == SUFFIX:
        return p.resolve()
    if p.is_dir():
        return None if (p / "config.json").is_file() else _one_in(p, str(p))
    if p.suffix == SUFFIX:
        raise UserError(f"model.source {source!r} is not a file", "give the path of an existing .gguf file")
    top = source.split(".")[0]
    if not top.isidentifier():
        return None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = _one_in(Path(location), f"package {top!r}")
        if found is not None:
            return found.resolve()
    return None


def _reader(path: Path) -> Any:
    try:
        import gguf
    except ImportError:
        raise UserError(
            f"{path.name} is a GGUF file and reading one needs the `gguf` package", "pip install 'costopt[llamacpp]'"
        ) from None
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated or foreign file: the reader's own words, in one line
        raise UserError(f"{path} is not a readable GGUF file ({type(e).__name__}: {str(e)[:160]})", "download it again") from None


def file_type_name(value: int) -> str:
    """llama.cpp's name for a `general.file_type` (Q4_K_M, Q8_0, F16, ...)."""
    import gguf

    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return f"type {value}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def describe(path: Path) -> dict[str, Any]:
    """What a GGUF file holds: architecture, llama.cpp file type, tensor types and how many of each."""
    r = _reader(path)

    def field(key: str) -> Any:
        f = r.fields.get(key)
        return None if f is None else f.contents()

    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    ftype = field("general.file_type")
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "architecture": field("general.architecture"),
        "name": field("general.name"),
        "file_type": file_type_name(int(ftype)) if ftype is not None else None,
        "tensor_types": types,
        "quantized": any(t not in FLOAT_TYPES for t in types),
    }


def tensor_elements(path: Path) -> int:
    """Parameters in a GGUF file: the elements of its tensors (quantized blocks count as their weights)."""
    return int(sum(int(t.n_elements) for t in _reader(path).tensors))


def tokenizer_fields(path: Path) -> dict[str, tuple[Any, Any]]:
    """The file's tokenizer.* key-values (name -> (value, gguf value type)), for a GGUF written from it."""
    r = _reader(path)
    out = {}
    for name, f in r.fields.items():
        if name.startswith("tokenizer."):
            vtype = f.types[0]
            sub = f.types[-1] if len(f.types) > 1 else None
            out[name] = (f.contents(), (vtype, sub))
    return out


def _key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{FORMAT}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def materialize(path: Path) -> Path:
    """A Hugging Face folder with the GGUF's weights dequantized to fp32, its tokenizer and chat template;
    made once per file (keyed by path, size and modification time) and reused."""
    out = cache_root() / f"{path.stem}-{_key(path)}"
    if (out / INFO_FILE).is_file():
        return out
    info = describe(path)
    if info["architecture"] is None:
        raise UserError(f"{path} names no general.architecture", "give a GGUF model file written by llama.cpp's tools")
    try:
        import accelerate  # noqa: F401 - transformers' GGUF loader needs it
    except ImportError:
        raise UserError("loading a GGUF file into torch needs `accelerate`", "pip install 'costopt[llamacpp]'") from None
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        with contextlib.redirect_stderr(io.StringIO()):  # the GGUF loader's own progress bar, which logging does not reach
            loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise UserError(
            f"transformers could not load {path.name} ({info['architecture']}, {info['file_type']}): {str(e).splitlines()[0][:160]}",
            "use a GGUF of an architecture transformers reads (llama, mistral, qwen2, ...), or the model's HF folder",
        ) from None
    # a GGUF-loaded model refuses save_pretrained; the same weights in a fresh module of its config save
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=loaded.dtype)
    fresh.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)  # the folder holds plain fp32 weights; reloading must not look for GGUF
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    # the tokenizer read from a GGUF states no input limit (transformers would assume 512): the file's context
    tok.model_max_length = int(loaded.config.max_position_embeddings)
    tok.save_pretrained(tmp)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def source_info(folder: str | Path) -> dict[str, Any] | None:
    """The GGUF file a materialized folder came from (describe's dict), or None for any other folder."""
    f = Path(folder) / INFO_FILE
    return json.loads(f.read_text()) if f.is_file() else None
