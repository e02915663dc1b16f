"""Config validation keeps every run bounded: a duration, a request cap and finite timeouts, or a clear refusal."""

from __future__ import annotations

import math

import pytest

from loadgen.config import ConfigError, LoadgenConfig, to_config


@pytest.mark.parametrize(
    "override, key",
    [
        ({"load": {"duration_s": 0}}, "load.duration_s"),
        ({"load": {"duration_s": -5}}, "load.duration_s"),
        ({"load": {"duration_s": math.inf}}, "load.duration_s"),
        ({"load": {"max_requests": 0}}, "load.max_requests"),
        ({"load": {"max_requests": -1}}, "load.max_requests"),
        ({"load": {"drain_s": math.inf}}, "load.drain_s"),
        ({"target": {"timeout_s": 0}}, "target.timeout_s"),
        ({"target": {"timeout_s": math.inf}}, "target.timeout_s"),
        ({"target": {"stall_timeout_s": -1}}, "target.stall_timeout_s"),
        ({"target": {"connect_timeout_s": math.inf}}, "target.connect_timeout_s"),
        ({"max_run_s": math.inf}, "max_run_s"),
    ],
)
def test_an_unbounded_or_impossible_limit_is_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^config key '{key}' is .*; expected .*") as err:
        to_config(override)
    assert "finite" in str(err.value) or "positive" in str(err.value)


@pytest.mark.parametrize("key", ["duration_s", "max_requests"])
def test_a_run_without_a_duration_or_a_request_cap_is_refused(key):
    with pytest.raises(ConfigError, match=rf"^config key 'load\.{key}' is None; expected (a number|an integer)"):
        to_config({"load": {key: None}})


def test_the_defaults_are_bounded():
    cfg = to_config({})
    assert isinstance(cfg, LoadgenConfig)
    assert 0 < cfg.load.duration_s < math.inf and cfg.load.max_requests > 0
    assert 0 < cfg.target.timeout_s < math.inf and 0 < cfg.max_run_s < math.inf


@pytest.mark.parametrize("headers", [{"X-Team": "a\r\nHost: evil"}, {"Bad Name": "x"}, {"X:Y": "z"}])
def test_a_header_that_would_break_requests_is_refused_naming_it(headers):
    name = next(iter(headers))
    with pytest.raises(ConfigError, match=rf"^config key 'target\.headers\.{name}' is .*; expected a header name"):
        to_config({"target": {"headers": headers}})
