"""The TorchServe handler's settings: model-config.yaml's `handler:` section first, then the
environment, then defaults; no Sidelight address is a clear error at model load.

The handler end to end, inside a real TorchServe, is tests/integrations/test_torchserve.py.
"""

from __future__ import annotations

import warnings

import pytest

with warnings.catch_warnings():
    # TorchServe 0.12's ts/version.py reads its version file without closing it (the handler
    # imports ts); inside TorchServe that is harmless, here warnings are errors.
    warnings.simplefilter("ignore", ResourceWarning)
    from sidelight_handlers.torchserve import Settings

VARIABLES = (
    "SIDELIGHT_ADDRESS",
    "SIDELIGHT_DEADLINE_S",
    "SIDELIGHT_MODEL",
    "SIDELIGHT_MODEL_VERSION",
    "SIDELIGHT_METHOD",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_model_config_section_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIDELIGHT_ADDRESS", "elsewhere:1")
    monkeypatch.setenv("SIDELIGHT_DEADLINE_S", "99")
    section = {
        "sidelight_address": "sidelight:50051",
        "sidelight_deadline_s": 2.5,
        "sidelight_model": "bc",
        "sidelight_model_version": 3,
        "default_method": "saliency",
    }
    assert Settings.from_context(section, "ts_name") == Settings(
        address="sidelight:50051",
        deadline_s=2.5,
        model="bc",
        model_version="3",
        default_method="saliency",
    )


def test_the_environment_then_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDELIGHT_ADDRESS", "127.0.0.1:7")
    monkeypatch.setenv("SIDELIGHT_METHOD", "input_x_gradient")
    assert Settings.from_context({}, "ts_name") == Settings(
        address="127.0.0.1:7",
        deadline_s=10.0,
        model="ts_name",  # TorchServe's name for the model
        model_version="",  # Sidelight's latest
        default_method="input_x_gradient",
    )


def test_no_address_names_both_places() -> None:
    with pytest.raises(ValueError, match=r"handler\.sidelight_address .* or SIDELIGHT_ADDRESS"):
        Settings.from_context({"sidelight_deadline_s": 1}, "bc")
