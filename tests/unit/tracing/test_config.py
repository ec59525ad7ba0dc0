"""Tracing settings: ``--otlp-endpoint``, the OTEL_* variables, and the errors for bad ones."""

from __future__ import annotations

import pytest

from headwater.tracing.config import TracingConfig, TracingConfigError, resolve, traces_url


def test_off_without_an_endpoint() -> None:
    assert resolve(environ={}) is None
    assert resolve(environ={"OTEL_TRACES_SAMPLER": "always_on"}) is None


def test_on_with_the_option_or_a_variable() -> None:
    config = resolve(endpoint="http://collector:4318", environ={})
    assert config == TracingConfig(endpoint="http://collector:4318/v1/traces")
    # From the environment, the exporter reads the URL itself (base or traces URL).
    assert resolve(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == TracingConfig()
    assert resolve(environ={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/t"}) == TracingConfig()


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"OTEL_SDK_DISABLED": "true"}, id="sdk-disabled"),
        pytest.param({"OTEL_SDK_DISABLED": "TRUE"}, id="sdk-disabled-any-case"),
        pytest.param({"OTEL_TRACES_EXPORTER": "none"}, id="exporter-none"),
    ],
)
def test_switched_off_by_the_standard_variables(environ: dict[str, str]) -> None:
    assert resolve(endpoint="http://c:4318", environ=environ) is None


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://c:4318", "http://c:4318/v1/traces"),
        ("http://c:4318/", "http://c:4318/v1/traces"),
        ("https://c/otlp", "https://c/otlp/v1/traces"),
        ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
    ],
)
def test_the_endpoint_is_a_base_url(base: str, url: str) -> None:
    assert traces_url(base) == url


@pytest.mark.parametrize(
    ("environ", "parent_based", "ratio"),
    [
        pytest.param({}, True, 1.0, id="default-parentbased-always-on"),
        pytest.param({"OTEL_TRACES_SAMPLER": "always_off"}, False, 0.0, id="always-off"),
        pytest.param(
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
            False,
            0.25,
            id="traceidratio",
        ),
        pytest.param(
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            True,
            0.01,
            id="parentbased-traceidratio",
        ),
    ],
)
def test_samplers_from_the_environment(
    environ: dict[str, str], parent_based: bool, ratio: float
) -> None:
    config = resolve(endpoint="http://c:4318", environ=environ)
    assert config is not None
    assert (config.parent_based, config.sampling) == (parent_based, ratio)


def test_the_option_wins_over_the_sampler_argument() -> None:
    environ = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    config = resolve(endpoint="http://c:4318", sampling=0.01, environ=environ)
    assert config is not None and config.sampling == 0.01


@pytest.mark.parametrize(
    ("kwargs", "environ", "message"),
    [
        pytest.param({"sampling": 1.5}, {}, "within 0..1", id="ratio-over-1"),
        pytest.param({"sampling": -0.1}, {}, "within 0..1", id="ratio-negative"),
        pytest.param(
            {}, {"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER", id="sampler"
        ),
        pytest.param(
            {},
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG=half",
            id="sampler-arg",
        ),
        pytest.param(
            {},
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG=2",
            id="sampler-arg-range",
        ),
        pytest.param({}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf", id="grpc"),
        pytest.param(
            {}, {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "http/protobuf", id="json"
        ),
        pytest.param({}, {"OTEL_TRACES_EXPORTER": "zipkin"}, "otlp only", id="exporter"),
        pytest.param({"trace_url": "http://jaeger/trace/"}, {}, "{trace_id}", id="trace-url"),
    ],
)
def test_settings_that_cannot_work_are_refused_by_name(
    kwargs: dict[str, object], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(TracingConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        resolve(endpoint="http://c:4318", environ=environ, **kwargs)  # type: ignore[arg-type]


def test_an_endpoint_that_is_not_http_is_refused() -> None:
    with pytest.raises(TracingConfigError, match="OTLP over HTTP"):
        resolve(endpoint="localhost:4317", environ={})
