"""config schema names each installed component's parameters; config validate with no file checks the default."""

from __future__ import annotations

import json

import pytest
import yaml

from transmodal.cli import main
from transmodal.config import default_experiment_dict, load_experiment, resolved_config, validate_components
from transmodal.plugins import get_plugins


@pytest.fixture
def schema(capsys: pytest.CaptureFixture) -> dict:
    assert main(["config", "schema"]) == 0
    return json.loads(capsys.readouterr().out)


def choices(schema: dict, definition: str) -> dict[str, dict]:
    return {option["properties"]["name"]["const"]: option for option in schema["$defs"][definition]["anyOf"]}


def test_the_schema_offers_every_installed_component_with_its_parameters(schema):
    strategies = choices(schema, "StrategyComponent")
    assert {"finetune", "dann", "mmd"} <= set(strategies)
    dann = strategies["dann"]
    assert dann["additionalProperties"] is False and "weight" in dann["properties"]
    assert dann["properties"]["weight"]["default"] == 1.0
    assert schema["properties"]["adaptation"]["items"] == {"$ref": "#/$defs/StrategyComponent"}
    encoders = choices(schema, "EncoderBackboneComponent")
    assert "channels" in encoders["small-cnn"]["properties"] and "bow" in encoders
    assert schema["$defs"]["ModelConfig"]["properties"]["encoders"]["additionalProperties"] == {
        "$ref": "#/$defs/EncoderBackboneComponent"}
    assert "train_size" in choices(schema, "DatasetComponent")["synthetic-shapes"]["properties"]
    assert set(choices(schema, "ValidatorComponent")) >= {"source-val"}


def test_the_schema_accepts_a_resolved_config_and_catches_a_misspelt_parameter(schema):
    jsonschema = pytest.importorskip("jsonschema")
    experiment = load_experiment(None)
    config = resolved_config(experiment, validate_components(experiment, get_plugins()))
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(json.loads(json.dumps(config)))) == []
    config["adaptation"][0]["weigth"] = 2.0
    assert list(validator.iter_errors(config))


def test_config_validate_without_a_file_checks_the_default_experiment(capsys, tmp_path):
    assert main(["config", "validate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the default experiment: valid") and "strategy dann" in out
    assert main(["config", "validate", "--set", "adaptation.0.weigth=2"]) == 2
    assert "weigth" in capsys.readouterr().err
    path = tmp_path / "default.yaml"
    path.write_text(yaml.safe_dump(default_experiment_dict()))
    assert main(["config", "validate", str(path)]) == 0


def test_parameter_models_that_share_a_definition_name_keep_their_own():
    from typing import Literal

    from pydantic import BaseModel

    from transmodal.schema import _merge_definitions

    class Mode(BaseModel):
        kind: Literal["a", "b"] = "a"

    class FirstParams(BaseModel):
        mode: Mode = Mode()

    definitions: dict = {}
    first = _merge_definitions(FirstParams.model_json_schema(ref_template="#/$defs/{model}"), "fusion.x", definitions)

    class Mode(BaseModel):  # noqa: F811 - another plugin's model of the same name
        size: int = 3

    class SecondParams(BaseModel):
        mode: Mode = Mode()

    second = _merge_definitions(SecondParams.model_json_schema(ref_template="#/$defs/{model}"), "fusion.y",
                                definitions)
    assert first["properties"]["mode"]["$ref"] == "#/$defs/Mode"
    assert second["properties"]["mode"]["$ref"] == "#/$defs/fusion.y.Mode"
    assert "kind" in definitions["Mode"]["properties"] and "size" in definitions["fusion.y.Mode"]["properties"]


def test_every_example_config_is_valid_against_the_schema(schema):
    """Editors check configs against `config schema`: what the examples write (e.g. glyphs' `source: print`, one
    domain where a list may stand) must pass it, for the components installed here."""
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    from transmodal.errors import UnknownComponentError

    validator = jsonschema.Draft202012Validator(schema)
    checked = 0
    for path in sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")):
        try:
            validate_components(load_experiment(path), get_plugins())
        except UnknownComponentError:  # a component of a plugin not installed here (the core alone)
            continue
        errors = [error.message for error in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path.name
        checked += 1
    assert checked > 0
