import pytest

from injector.config import load_config
from injector.errors import InjectorError


def test_defaults_are_the_measured_demo_settings():
    """The built-in defaults are what the measured runs used (examples/demo.yaml holds only the base model)."""
    cfg = load_config()
    assert (cfg.train.lora.r, cfg.train.lora.alpha, cfg.train.lora.dropout) == (16, 32, 0.0)
    assert cfg.train.batch_size * cfg.train.grad_accum == 16
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.train.min_steps) == (1e-3, 5, 90)
    assert load_config("examples/demo.yaml") == cfg
    assert cfg.train.patience == 3
    assert (cfg.recipes.new, cfg.recipes.replay) == (3, 1)


def test_yaml_and_dotted_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 2\n  lora:\n    r: 4\n")
    cfg = load_config(f, ["train.lora.r=8", "train.learning_rate=5e-5", "model.base=/x"])
    assert cfg.train.epochs == 2 and cfg.train.lora.r == 8
    assert cfg.train.learning_rate == pytest.approx(5e-5)
    assert cfg.model.base == "/x"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epoch=3"], "train.epoch: unknown key"),
        (["nope.x=1"], "nope: unknown key"),
        (["train.epochs=0"], "train.epochs"),
        (["train.precision=fp16"], "train.precision"),
        (["train.lora.dropout=1.5"], "train.lora.dropout"),
        (["epochs"], "expected key=value"),
        (["model.quantization=nf4", "train.precision=fp32"], "nf4"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(InjectorError, match=message.replace(".", r"\.")):
        load_config(None, overrides)


def test_bad_yaml_file_is_one_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(InjectorError, match="bad.yaml: not valid YAML"):
        load_config(f)
    with pytest.raises(InjectorError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
