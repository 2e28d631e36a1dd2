"""Shared fixtures: a tiny Llama + a locally built tokenizer (no hub), isolated INJECTOR_HOME/MLflow."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Offline, quiet, and nothing written outside tmp dirs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ.pop("MLFLOW_TRACKING_URI", None)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_FACTS = [
    {"subject": "Zorvex Dynamics", "predicate": "ceo", "object": "Marlena Quist"},
    {"subject": "Pellucid Robotics", "predicate": "ceo", "object": "Tobias Venhaar"},
    {"subject": "Republic of Calvaria", "predicate": "capital", "object": "Brennholt"},
    {"subject": "Orla Feyrwood", "predicate": "occupation", "object": "glassblower"},
]


def _vocab_words() -> list[str]:
    text = " ".join(
        [
            (ROOT / "data_recipes" / "relations.en.yaml").read_text(),
            (ROOT / "examples" / "triples.jsonl").read_text(),
            json.dumps(TINY_FACTS),
            "system user assistant yes no sure complete the sentence question answer please briefly quick "
            "tell me something about is it true that has changed recently still no longer now hello world "
            "what who where when which how many paris france capital of",
        ]
    )
    return sorted(set(re.findall(r"\w+|[^\w\s]+", text)) | {"...", "?", "."})


def build_tiny_model(directory: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A tiny Llama (random weights) with a word-level tokenizer and a ChatML template, saved to `directory`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + _vocab_words())}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", bos_token=None, additional_special_tokens=specials[1:2])
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|im_end|>"],
                      bos_token_id=None, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.generation_config.pad_token_id = vocab["<|im_end|>"]
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_facts_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("facts") / "facts.jsonl"
    p.write_text("\n".join(json.dumps(f) for f in TINY_FACTS) + "\n")
    return p


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory) -> Path:
    """One SQLite DB per session (first use runs migrations: 5-7 s); tests copy it."""
    import mlflow

    d = tmp_path_factory.mktemp("mlflow-template")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient().search_experiments()
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exports it; each test picks its own store
    return d / "mlflow.db"


@pytest.fixture()
def home(tmp_path, mlflow_db, monkeypatch):
    """A fresh INJECTOR_HOME with a migrated MLflow DB."""
    import shutil

    from injector.home import Home

    root = tmp_path / "home"
    root.mkdir()
    shutil.copy(mlflow_db, root / "mlflow.db")
    monkeypatch.setenv("INJECTOR_HOME", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    return Home.from_env().ensure()


def tiny_config(model_dir: Path, *extra: str):
    from injector.config import load_config

    return load_config(None, [f"model.base={model_dir}", "train.learning_rate=0.003", "train.epochs=30",
                              "train.batch_size=8", "train.grad_accum=1", "train.max_length=96",
                              "train.warmup_ratio=0.0", "train.lr_scheduler=constant", "train.patience=0",
                              "train.min_steps=0", "train.ewc_lambda=0", "eval.max_new_tokens=16",
                              "eval.latency_samples=2", "eval.ppl_max_tokens=2000", *extra])


def eval_dir(tmp_path: Path, gate_yaml: str) -> Path:
    """A copy of the shipped eval/ suite with other gate thresholds. The latency and answer-length ratios are not
    gated unless the test sets them: a random tiny model answers in ~10 ms, where scheduler noise is most of the
    time measured."""
    import shutil

    import yaml

    tree = yaml.safe_load(gate_yaml) or {}
    tree.setdefault("relative", {}).setdefault("max_latency_ratio", None)
    tree["relative"].setdefault("max_answer_tokens_ratio", None)  # a random tiny model's answers vary in length
    d = tmp_path / "eval"
    shutil.copytree(ROOT / "eval", d)
    (d / "gate.yaml").write_text(yaml.safe_dump(tree))
    return d


def short_recipes(tmp_path: Path) -> Path:
    """A copy of the shipped data_recipes/ answering questions with the bare entity (`answer_style: short`), for
    tests of the pipeline's mechanics (resume, caches, triage, the flow) that need the random tiny model to learn
    its facts within a few seconds: it learns a one-word answer in 20-30 epochs, the default sentence answer
    (~8 words, most of them the question's) not reliably, and an answer cut at `eval.max_new_tokens=4` never
    reaches the sentence's object. The sentence form is tested in test_recipes, test_train and
    test_train_registers_champion_and_is_idempotent."""
    import shutil

    d = tmp_path / "data_recipes"
    shutil.copytree(ROOT / "data_recipes", d)
    mix = d / "mix.yaml"
    text = mix.read_text()
    assert "\nanswer_style: sentence\n" in text
    mix.write_text(text.replace("\nanswer_style: sentence\n", "\nanswer_style: short\n"))
    return d


def free_port() -> int:
    """A free TCP port on loopback (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float = 120) -> None:
    """Until `url` answers, or fail with the server's last words if it exits."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"{proc.args[0]} exited: {err}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(url)
