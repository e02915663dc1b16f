"""Hydra as its users expect: dict options without '+', a number as a fixed length, one-line errors, help from config.py."""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass

import pytest

import loadgen.config as config
from loadgen.cli import help_text, user_message
from loadgen.config import ConfigError, LengthDist, LoadgenConfig, field_help
from loadgen.workload import read_rows
from test_docs_commands import compose


def _generic_log(tmp_path, n: int = 20):
    path = tmp_path / "log.csv"
    rows = [f"{i * 0.1:.1f},{1000 + 1000 * (i % 2)},{7 + 2 * (i % 2)}" for i in range(n)]
    path.write_text("arrival_s,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    return path


def test_dict_options_take_new_keys_without_plus(tmp_path):
    log = _generic_log(tmp_path)
    cfg = compose([
        "workload=generic", f"workload.path={log}", "workload.columns.arrival_s=ts",
        "target.headers.X-Team=a", "target.extra_body.top_p=0.9", "target.extra_body.seed=7",
    ])
    assert cfg.workload.columns == {"arrival_s": "ts"}
    assert cfg.target.headers == {"X-Team": "a"}
    assert cfg.target.extra_body == {"top_p": 0.9, "seed": 7}


def test_a_typo_next_to_a_dict_option_is_still_refused():
    with pytest.raises(Exception) as err:
        compose(["target.headerz.X-Team=a"])
    assert "config key 'target.headerz' is not an option" in user_message(err.value)


def test_a_number_is_a_fixed_length_for_inputs_and_outputs():
    short = compose(["workload.input_tokens=16", "workload.output_tokens=32", "workload.num_requests=50"])
    spelled = compose([
        "workload.input_tokens.dist=fixed", "workload.input_tokens.mean=16",
        "workload.output_tokens.dist=fixed", "workload.output_tokens.mean=32", "workload.num_requests=50",
    ])
    assert short.workload.input_tokens == spelled.workload.input_tokens
    assert short.workload.output_tokens == spelled.workload.output_tokens
    rows = read_rows(short.workload)[1]
    assert set(rows.column("input_tokens").to_pylist()) == {16}
    assert set(rows.column("output_tokens").to_pylist()) == {32}
    assert compose(["workload.input_tokens=20000"]).workload.input_tokens.max >= 20000  # not clipped to 8192


@pytest.mark.parametrize(
    "override, key",
    [
        ("workload.input_tokens=-1", "workload.input_tokens"),
        ("workload.output_tokens=0", "workload.output_tokens"),
        ("workload.input_tokens.mean=-5", "workload.input_tokens.mean"),
        ("workload.output_tokens.mean=-5", "workload.output_tokens.mean"),
        ("workload.input_tokens.std=-1", "workload.input_tokens.std"),
        ("workload.input_tokens.min=-1", "workload.input_tokens.min"),
        ("workload.output_tokens.min=0", "workload.output_tokens.min"),
    ],
)
def test_negative_lengths_are_refused_naming_the_key(override, key):
    extra = ["workload.input_tokens.dist=normal"] if ".std" in override else []
    with pytest.raises(ConfigError, match=rf"^config key '{re.escape(key)}' is -?\d[\d.]*; expected "):
        compose([*extra, override])


def test_empirical_lengths_resample_the_matching_column(tmp_path):
    log = _generic_log(tmp_path)
    cfg = compose([
        "workload.input_tokens.dist=empirical", f"workload.input_tokens.path={log}",
        "workload.output_tokens.dist=empirical", f"workload.output_tokens.path={log}",
        "workload.input_tokens.max=100000", "workload.num_requests=200",
    ])
    assert cfg.workload.input_tokens.column == "input_tokens"
    assert cfg.workload.output_tokens.column == "output_tokens"
    rows = read_rows(cfg.workload)[1]
    assert set(rows.column("input_tokens").to_pylist()) == {1000, 2000}
    assert set(rows.column("output_tokens").to_pylist()) == {7, 9}


def test_a_length_that_is_neither_a_number_nor_a_distribution_is_refused():
    with pytest.raises(ConfigError, match=r"^config key 'workload.input_tokens' is 'abc'; expected a number of tokens"):
        config.to_config({"workload": {"input_tokens": "abc"}})
    assert config.length_dist(LengthDist(dist="empirical", path=__file__), "workload.output_tokens").column == "output_tokens"


@pytest.mark.parametrize(
    "override, message",
    [
        ("load.foo=1", "config key 'load.foo' is not an option; expected one of load.kind, load.levels"),
        ("+load.foo=1", "config key 'load.foo' is not an option; expected one of load.kind, load.levels"),
        ("target.urll=http://x", "config key 'target.urll' is not an option; expected a key of target - did you mean 'target.url'?"),
        ("load.duration_s=abc", "config key 'load.duration_s' is 'abc'; expected a number (length of each level's sending phase)."),
        ("load.levels=[1,x]", "config key 'load.levels[1]' is 'x'; expected a number"),
        ("target.tls.verify=maybe", "config key 'target.tls.verify' is 'maybe'; expected true or false"),
        ("load=foo", "config group 'load' has no option 'foo'; expected one of "),
        ("load.levels=[1,2", "cannot parse the override 'load.levels=[1,2'"),
        ("load.arrival=uniform", "config key 'load.arrival' is 'uniform'; expected one of constant, poisson, gamma."),
    ],
)
def test_user_errors_are_one_line_naming_the_key_and_what_was_expected(override, message):
    with pytest.raises(Exception) as err:
        compose([override])
    text = user_message(err.value)
    assert text is not None and message in text, text
    assert "\n" not in text


def test_a_bug_is_not_dressed_up_as_a_user_error():
    assert user_message(ZeroDivisionError("x")) is None


def _dataclasses():
    return [c for c in vars(config).values() if isinstance(c, type) and is_dataclass(c) and c.__module__ == config.__name__]


@pytest.mark.parametrize("cls", _dataclasses(), ids=lambda c: c.__name__)
def test_every_option_has_a_one_line_description(cls):
    docs = field_help(cls)
    for f in fields(cls):
        nested = f.default_factory() if callable(f.default_factory) else None
        assert f.name in docs or (is_dataclass(nested) and type(nested).__doc__), f"{cls.__name__}.{f.name} has no # description"


def test_help_lists_every_key_with_its_value_and_description_by_section():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from loadgen.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        node = hydra_compose("config", overrides=["target=vllm", "target.url=http://127.0.0.1:8000/v1", "load.duration_s=7"])
    text = help_text(node)
    for section in ("target", "workload", "load", "cluster", "slo", "analysis"):
        assert re.search(rf"^== {section}: \S", text, re.M), section
    assert "  target.engine=vllm " in text and "  load.duration_s=7.0 " in text  # the values after the overrides
    lines = {line.split("=", 1)[0].strip(): line for line in text.splitlines() if "=" in line and line.startswith("  ") and not line.startswith("  e.g.")}
    for key, doc in [("load.duration_s", "length of each level's sending phase"), ("target.tls.verify", "check the server's certificate"),
                     ("workload.input_tokens.mean", "fixed value, or the mean"), ("max_run_s", "hard bound on the whole run's wall time")]:
        assert doc in lines[key], key
    assert text.count("e.g. loadgen ") == 6
    assert "$$" in text  # '$' escaped for Hydra's string.Template


def test_the_help_examples_compose():
    from loadgen.cli import SECTION_EXAMPLES

    for example in SECTION_EXAMPLES.values():
        overrides = example.split()
        if "cluster=ray" in overrides:
            overrides.append("cluster.address=auto")
        assert isinstance(compose(overrides), LoadgenConfig)
