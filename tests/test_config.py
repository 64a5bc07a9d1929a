"""Config loading, overrides and the two validation phases: messages name the path, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from transmodal.config import (
    apply_overrides,
    load_experiment,
    parse_experiment,
    validate_components,
)
from transmodal.errors import ConfigError, UnknownComponentError
from transmodal.yaml_limits import parse_yaml
from transmodal.plugins import get_plugins


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_yaml_with_component_parameters_inline(tmp_path: Path):
    path = write(tmp_path, """
name: fused
model:
  encoders:
    image: {name: small-cnn, channels: [8, 16]}
  fusion: {name: concat, hidden: 64}
adaptation:
  - {name: dann, weight: 0.5}
trainer: {epochs: 3, precision: bf16}
""")
    experiment = load_experiment(path)
    assert experiment.model.fusion.params == {"hidden": 64}
    assert experiment.adaptation[0].params == {"weight": 0.5}
    assert experiment.trainer.precision == "bf16"
    resolved = validate_components(experiment, get_plugins())
    assert resolved["model.fusion"].params.hidden == 64
    assert resolved["adaptation.0"].params.weight == 0.5


def test_set_overrides_parse_values_as_yaml(tmp_path: Path):
    path = write(tmp_path, "model: {encoders: {image: {name: small-cnn}}, fusion: {name: concat}}\n"
                           "adaptation: [{name: dann}]\n")
    experiment = load_experiment(path, ["trainer.epochs=7", "model.fusion.hidden=12", "adaptation.0.weight=0.25",
                                        "model.encoders.image.channels=[4, 8]"])
    assert experiment.trainer.epochs == 7
    assert experiment.model.fusion.params == {"hidden": 12}
    assert experiment.adaptation[0].params == {"weight": 0.25}
    assert experiment.model.encoders["image"].params == {"channels": [4, 8]}


def test_parameters_without_a_name_keep_the_default_component(tmp_path: Path):
    experiment = load_experiment(None, ["data.dataset.train_size=400", "validator.metric=macro_f1"])
    assert experiment.data.dataset.name == "synthetic-shapes" and experiment.data.dataset.params == {"train_size": 400}
    assert experiment.validator.name == "source-val"
    resolved = validate_components(experiment, get_plugins())
    assert resolved["data.dataset"].params.train_size == 400
    path = write(tmp_path, "data: {tokenizer: {lowercase: false}}\nmodel: {encoders: {text: {embedding_dim: 8}}}\n")
    experiment = load_experiment(path, ["model.fusion.hidden=12"])
    assert [experiment.data.tokenizer.name, experiment.model.encoders["text"].name] == ["word", "bow"]
    assert experiment.model.fusion.name == "concat" and experiment.model.fusion.params == {"hidden": 12}
    assert validate_components(experiment, get_plugins())["model.encoders.text"].params.embedding_dim == 8


def test_setting_one_key_of_a_section_the_file_leaves_out_keeps_its_other_defaults(tmp_path: Path):
    path = write(tmp_path, "data: {dataset: {name: synthetic-shapes}}\n")
    defaults = load_experiment(path)
    experiment = load_experiment(path, ["model.encoders.image.channels=[8]", "adaptation.0.encoder_lr_scale=0.5"])
    assert experiment.model.encoders["image"].params == {"channels": [8]}
    assert experiment.model.encoders["text"] == defaults.model.encoders["text"]
    assert experiment.model.model_copy(update={"encoders": defaults.model.encoders}) == defaults.model
    assert [(spec.name, spec.params) for spec in experiment.adaptation] == [("finetune", {"encoder_lr_scale": 0.5})]


def test_a_key_set_twice_in_one_section_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"'epochs' is set twice in the same section \(line 2 and line 3\)"):
        load_experiment(write(tmp_path, "trainer:\n  epochs: 1\n  epochs: 2\n"))
    with pytest.raises(ConfigError, match="'name' is set twice"):
        load_experiment(write(tmp_path, "adaptation: [{name: dann, name: mmd}]\n"))
    # The same key in sibling sections, and merging anchors, are not repetitions.
    merged = parse_yaml("a: &a {x: 1}\nb: &b {y: 2}\nc: {<<: *a, <<: *b, x: 3}\n", "test")
    assert merged["c"] == {"x": 3, "y": 2}


def test_components_with_no_default_still_need_a_name(tmp_path: Path):
    with pytest.raises(ConfigError, match="model.encoders.audio.name: Field required"):
        load_experiment(None, ["model.encoders.audio.dim=3"])
    with pytest.raises(ConfigError, match="adaptation.0.name: Field required"):  # a list replaces the default
        load_experiment(write(tmp_path, "adaptation: [{weight: 0.5}]\n"))


@pytest.mark.parametrize("override, message", [
    ("trainer.epochs", "--set expects path.to.key=value"),
    ("adaptation.3.weight=1", "'3' is not an index of a list of 1 items"),
    ("trainer.epochs.x=1", "'trainer.epochs' is a value, not a section"),
])
def test_bad_overrides(override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"adaptation": [{"name": "dann"}], "trainer": {"epochs": 2}}, [override])


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=true", "optimizer: Value error, lr: true is a boolean, not a number"),
    ("trainer.epochs=yes", "trainer: Value error, epochs: true is a boolean, not a number"),
    ("adaptation.0.weight=false", "adaptation.0.weight: false is a boolean, not a number"),
])
def test_a_boolean_where_a_number_belongs_is_refused_not_read_as_one(override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        validate_components(load_experiment(None, [override]), get_plugins())
    assert load_experiment(None, ["trainer.compile=true"]).trainer.compile is True  # a boolean field takes one


def test_wrong_type_names_path_value_and_rule():
    with pytest.raises(ConfigError) as raised:
        parse_experiment({"trainer": {"epochs": "many"}})
    assert "trainer.epochs: Input should be a valid integer" in str(raised.value)
    assert "'many'" in str(raised.value)


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"trainer.precision: Input should be 'fp32', 'bf16' or 'fp16' \(got 'fp8'\)"):
        parse_experiment({"trainer": {"precision": "fp8"}})


def test_unknown_key_suggests_and_lists_allowed_keys():
    with pytest.raises(ConfigError) as raised:
        parse_experiment({"trainer": {"epoch": 3}})
    message = str(raised.value)
    assert "trainer.epoch: unknown key. Did you mean: epochs?" in message
    assert "batch_size" in message


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="adaptaton: unknown key. Did you mean: adaptation?"):
        parse_experiment({"adaptaton": []})


def test_unknown_component_in_phase_two():
    experiment = parse_experiment({"model": {"fusion": {"name": "concatt"}}})
    with pytest.raises(UnknownComponentError) as raised:
        validate_components(experiment, get_plugins())
    assert "model.fusion.name: Unknown fusion 'concatt'. Did you mean: concat?" in str(raised.value)


def test_component_parameter_errors_carry_the_full_path():
    experiment = parse_experiment({
        "model": {"fusion": {"name": "concat", "hiden": 3}},
        "adaptation": [{"name": "dann", "weight": -1}],
    })
    with pytest.raises(ConfigError) as raised:
        validate_components(experiment, get_plugins())
    message = str(raised.value)
    assert "model.fusion.hiden: unknown key. Did you mean: hidden?" in message
    assert "adaptation.0.weight: Input should be greater than or equal to 0 (got -1)" in message


def test_switching_a_component_by_name_says_how_to_drop_the_old_parameters(tmp_path: Path):
    path = write(tmp_path, "model:\n  fusion: {name: concat, hidden: 64}\n")
    with pytest.raises(ConfigError) as raised:
        validate_components(load_experiment(path, ["model.fusion.name=mean"]), get_plugins())
    message = str(raised.value)
    assert "model.fusion.hidden: unknown key." in message
    assert "--set 'model.fusion={name: mean}'" in message
    experiment = load_experiment(path, ["model.fusion={name: mean}"])  # the advice, followed, validates
    assert validate_components(experiment, get_plugins())["model.fusion"].component.name == "mean"


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="Config file not found"):
        load_experiment(tmp_path / "nope.yaml")
    path = write(tmp_path, "trainer: {epochs: [1\n")
    with pytest.raises(ConfigError, match="Did you mean: .*experiment.yaml") as raised:
        load_experiment(tmp_path / "experiment.yml")
    assert str(raised.value).startswith(f"Config file not found: {tmp_path / 'experiment.yml'}.")
    with pytest.raises(ConfigError, match="is not valid YAML") as raised:
        load_experiment(path)
    assert f'in "{path}", line 2' in str(raised.value) and "<unicode string>" not in str(raised.value)
    with pytest.raises(ConfigError, match="must contain a mapping"):
        load_experiment(write(tmp_path, "- 1\n- 2\n"))


def test_default_experiment_is_image_and_caption_with_dann():
    experiment = load_experiment()
    assert sorted(experiment.model.encoders) == ["image", "text"]
    assert experiment.model.fusion.name == "concat"
    assert [spec.name for spec in experiment.adaptation] == ["dann"]
    assert experiment.data.dataset.name == "synthetic-shapes"
