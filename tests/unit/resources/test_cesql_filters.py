"""A Trigger's CESQL filter is checked when the file is loaded: what it may cost included."""

from __future__ import annotations

import pytest

from headwater.cesql import MAX_STRING_PASSES
from headwater.resources import ConfigError, load_text

TRIGGER = """\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec:
  broker: b
  filters:
    - cesql: "%s"
  subscriber: {uri: http://x/}
"""


def test_a_filter_that_may_cost_too_much_is_a_config_error_with_file_line_and_field() -> None:
    copies = ", ".join(["LOWER(subject)"] * (MAX_STRING_PASSES + 1))
    with pytest.raises(ConfigError) as info:
        load_text(TRIGGER % f"'x' IN ({copies})", "r.yaml")
    assert str(info.value).startswith(
        "r.yaml:7: Trigger t: spec.filters[0]: invalid CESQL expression: line 1, column 1: "
        f"the expression may read or copy a whole string {MAX_STRING_PASSES + 1} times per event"
    )


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        pytest.param("temperature > 23.5", "CESQL v1 has only integers", id="decimal"),
        pytest.param("x = " + "9" * 5000, "(5000 digits) is outside the 32-bit range", id="huge"),
    ],
)
def test_other_cesql_mistakes_are_config_errors_too(expression: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(TRIGGER % expression, "r.yaml")
    assert str(info.value).startswith("r.yaml:7: Trigger t: spec.filters[0]: invalid CESQL")
    assert reason in str(info.value)


def test_upper_case_attribute_names_load() -> None:
    [loaded] = load_text(TRIGGER % "EXISTS SOURCE AND Type = 'x'", "r.yaml")
    assert loaded.resource.spec.filters[0].cesql == "EXISTS SOURCE AND Type = 'x'"  # type: ignore[attr-defined]
