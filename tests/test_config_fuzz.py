"""Hostile and random configs: each ends in exit 0 or in exit 2 with a one-paragraph message, never a traceback
or a hang. ``config validate`` only: nothing is trained."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transmodal.cli import main

# TRANSMODAL_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the file within a few seconds.
FUZZ = settings(max_examples=int(os.environ.get("TRANSMODAL_FUZZ_EXAMPLES", 150)), deadline=2000,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def validate(capsys: pytest.CaptureFixture, path: Path, *overrides: str) -> tuple[int, str]:
    code = main(["config", "validate", str(path), *[f"--set={value}" for value in overrides]])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error: ") and "Traceback" not in err
        assert "\n\n" not in err.strip(), "one paragraph"
    return code, err


def billion_laughs(levels: int = 10) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("content, expected", [
    (billion_laughs().encode(), "expands to more than 10,000 values"),
    (("name: " + "[" * 1500 + "]" * 1500).encode(), "nested too deeply"),
    (("name: " + "[" * 100 + "]" * 100).encode(), "nested more than 32 levels deep"),
    (b"a: &a [*a]\n", "contains itself"),
    ("name: café\n".encode("latin-1"), "is not UTF-8 text: byte 0xe9 on line 1"),
    ("name: café\n".encode("utf-16-le"), "NUL bytes (UTF-16 without a byte-order mark?)"),
    (("trainer: {epochs: " + "9" * 5000 + "}").encode(), "a value cannot be read"),
    (b"x" * (1 << 20 + 1), "larger than 1024 KiB"),
])
def test_hostile_files_are_refused_quickly(tmp_path: Path, capsys, content: bytes, expected: str):
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    code, err = validate(capsys, path)
    assert code == 2 and expected in err


def test_utf16_with_a_byte_order_mark_is_read(tmp_path: Path, capsys):
    path = tmp_path / "utf16.yaml"
    path.write_bytes("name: café\ntrainer: {epochs: 2}\n".encode("utf-16"))
    assert validate(capsys, path)[0] == 0


def test_aliases_within_the_limit_are_fine(tmp_path: Path, capsys):
    path = tmp_path / "anchors.yaml"
    path.write_text("x-sizes: &sizes {train_size: 64, val_size: 32}\n"
                    "data: {dataset: {name: synthetic-shapes, <<: *sizes}}\n")
    code, err = validate(capsys, path)
    assert code == 2 and "x-sizes: unknown key" in err  # the anchor's host key itself is not a setting
    path.write_text("data: {dataset: &d {name: synthetic-shapes, train_size: 64}}\n")
    assert validate(capsys, path)[0] == 0


@pytest.mark.parametrize("override, expected", [
    ("trainer.epochs=100000000000000000000000", "trainer.epochs: Input should be less than or equal to 100000"),
    ("trainer.seed=18446744073709551616", "trainer.seed: Input should be less than or equal to 4294967295"),
    ("trainer.num_threads=100000", "trainer.num_threads: Input should be less than or equal to 1024"),
    ("trainer.device=meta", "'meta' is not a device transmodal trains on"),
    ("trainer.device=mps", "'mps' is not a device transmodal trains on"),
    ("trainer.device=xla", "'xla' is not a device transmodal trains on"),
    ("schedule.warmup_epochs=.inf", "schedule.warmup_epochs: Input should be a finite number"),
    ("data.augment.crop_padding=100000", "data.augment.crop_padding: Input should be less than or equal to 256"),
    ("name=" + "n" * 300, "name: Value error, is longer than the 100 bytes"),
    ("name=../elsewhere", "must be a single folder name"),
    ("adaptation.0.weight=.nan", "Input should be a finite number"),
    ("trainer.epochs=" + "[" * 60 + "]" * 60, "--set trainer.epochs is nested more than 32 levels deep"),
])
def test_out_of_range_values_are_refused_with_their_path(tmp_path: Path, capsys, override: str, expected: str):
    path = tmp_path / "ok.yaml"
    path.write_text("adaptation: [{name: dann}]\n")
    code, err = validate(capsys, path, override)
    assert code == 2 and expected in err


SETTINGS_PATHS = ["name", "trainer.epochs", "trainer.seed", "trainer.device", "trainer.num_threads",
                  "schedule.warmup_epochs", "data.augment.crop_padding", "model.fusion", "model.fusion.hidden",
                  "model.encoders.image.channels", "adaptation", "adaptation.0", "data.dataset", "output.name"]
# No subnormal floats: a training test earlier in the session may have set torch.set_flush_denormal(True).
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False), st.text(max_size=30))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(["name", "trainer", "epochs", "model", "fusion", "data", "dataset",
                                               "adaptation", "hidden", "seed", "device"]), st.text(max_size=8)),
                    inner, max_size=4)), max_leaves=20)
yaml_texts = st.text(alphabet=string.printable + "&*[]{}:-!|>'\"é\u2028", max_size=200)


@FUZZ
@given(document=documents)
def test_random_documents(tmp_path: Path, capsys, document: Any):
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(document))
    validate(capsys, path)


@FUZZ
@given(content=st.one_of(yaml_texts.map(str.encode), st.binary(max_size=200)))
def test_random_file_contents(tmp_path: Path, capsys, content: bytes):
    path = tmp_path / "random.yaml"
    path.write_bytes(content)
    validate(capsys, path)


@FUZZ
@given(key=st.one_of(st.sampled_from(SETTINGS_PATHS), st.text(max_size=20)), value=yaml_texts)
def test_random_overrides(tmp_path: Path, capsys, key: str, value: str):
    path = tmp_path / "base.yaml"
    path.write_text("adaptation: [{name: dann}]\n")
    validate(capsys, path, f"{key}={value}")
