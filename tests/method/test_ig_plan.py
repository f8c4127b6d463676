"""The IG settings' validation (one line naming the setting, before any model is loaded)."""

from __future__ import annotations

import pytest

from segattr_utils.method.ig_plan import IGSettings


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"n_steps": 1}, "n_steps"),
        ({"n_steps": 2.5}, "n_steps"),
        ({"n_steps": True}, "n_steps"),
        ({"method": "simpson"}, "method"),
        ({"internal_batch_size": -3}, "internal_batch_size"),
        ({"internal_batch_size": 0}, "internal_batch_size"),
        ({"internal_batch_size": "all"}, "internal_batch_size"),
        ({"activation_checkpointing": "yes"}, "activation_checkpointing"),
        ({"memory_budget_gb": 0}, "memory_budget_gb"),
        ({"memory_budget_gb": float("nan")}, "memory_budget_gb"),
        ({"memory_budget_gb": "8"}, "memory_budget_gb"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(settings, named):
    with pytest.raises(ValueError, match=named) as caught:
        IGSettings(**settings)
    assert "\n" not in str(caught.value)


def test_good_settings_and_profile_sections():
    assert IGSettings(n_steps=2, internal_batch_size="auto", activation_checkpointing="auto", memory_budget_gb=0.5)
    section = {"n_steps": 200, "method": "official", "internal_batch_size": 8, "answer_suffix": "x", "tau": 0.7}
    assert IGSettings.from_mapping(section) == IGSettings(n_steps=200, method="official", internal_batch_size=8)
