"""MLflow pyfunc model, logged as code: loads base + LoRA adapter and answers questions.

This file is copied into every logged model and must not import `injector`: a served model needs only
mlflow, torch, transformers and peft. Input: a DataFrame with a `question` column (or a list of strings).
Output: one greedy answer per question.
"""

import hashlib
import os
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(directory: Path) -> str:
    """The same digest injector records for a base (models._weights_sha256)."""
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        return ""
    if len(files) == 1:
        return _sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(_sha256(f).encode())
    return h.hexdigest()


def resolve_base(cfg: dict) -> str:
    """The base model for this version, on any host: the training host's path if it holds the same weights, else
    the registered copy of the weights (downloaded once, by sha256), else the hub id; the sha256 is checked."""
    want = cfg.get("base_sha256", "")
    local = Path(cfg.get("base_model_path", ""))
    if local.is_dir() and (not want or weights_sha256(local) == want):
        return str(local)
    if cfg.get("base_uri"):
        cache = Path(os.environ.get("INJECTOR_SERVING_CACHE", Path.home() / ".cache" / "injector-serving")) / want
        if not (cache / "base").is_dir():
            cache.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(artifact_uri=cfg["base_uri"], dst_path=str(cache))
        got = weights_sha256(cache / "base")
        if want and got != want:
            raise RuntimeError(f"base weights from {cfg['base_uri']} have sha256 {got[:12]}, this version was trained "
                               f"on {want[:12]}: refusing to serve a mismatched base")
        return str(cache / "base")
    if cfg.get("base_model_id"):
        return cfg["base_model_id"]
    raise RuntimeError(f"base model not found: {local} is missing here and the version names no other source")


class AdapterModel(PythonModel):
    def load_context(self, context):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = context.model_config or {}
        base = resolve_base(cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        # on a GPU host: bf16 on the GPU (as injector trains and evaluates there); else fp32 on the CPU
        cuda = torch.cuda.is_available()
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to("cuda" if cuda else "cpu")
        # merged for inference: same outputs, less latency
        self.model = PeftModel.from_pretrained(model, context.artifacts["adapter"]).merge_and_unload().eval()
        self.max_new_tokens = int(cfg.get("max_new_tokens", 48))

    def _questions(self, model_input):
        if hasattr(model_input, "columns"):
            col = "question" if "question" in model_input.columns else model_input.columns[0]
            return [str(q) for q in model_input[col].tolist()]
        if isinstance(model_input, dict):
            q = model_input.get("question", [])
            return [q] if isinstance(q, str) else list(q)
        if isinstance(model_input, str):
            return [model_input]
        return [str(q) for q in model_input]

    def predict(self, context, model_input, params=None):
        import torch

        questions = self._questions(model_input)
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                    tokenize=False) for q in questions]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        n = enc["input_ids"].shape[1]
        return [self.tokenizer.decode(row[n:], skip_special_tokens=True).strip() for row in out]


mlflow.models.set_model(AdapterModel())
