"""Config values from the environment, ``--set`` and files: a Config or ``ConfigError``, never
another exception, and a value is read whole (nothing after it silently dropped)."""

from __future__ import annotations

import json

from fuzz_strategies import big_digits, fuzz, json_values, nested
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from rstar.config import SECTIONS, Config, ConfigError, load_config

KEYS = [
    f"{s}.{f}"
    for s in SECTIONS
    for f in Config.model_fields[s].annotation.model_fields  # type: ignore[union-attr]
] + [
    k
    for k, f in Config.model_fields.items()
    if not (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel))
]

# TOML-ish values: scalars, arrays, inline tables, strings, broken quoting, deep nesting, huge numbers.
_pieces = st.sampled_from(
    ["1", "-1", "0.5", "1e999", "nan", "inf", "true", "'s'", '"s"', "'''", '"""', "[", "]", "{", "}", "=", ",",
     "a = 1", "\n", "\nx = 1", "\n[t]", " # c", "\\u0000", "\\", "1979-05-27", "0x1F", "_", "."]
)  # fmt: skip
raw_values = (
    st.lists(_pieces | st.text(max_size=5), max_size=12).map("".join)
    | st.text()
    | big_digits
    | nested(st.sampled_from(["1", "", "a = 1"]), (("[", "]"), ("{", "}"), ("{a = ", "}")))
)
keys = st.sampled_from(KEYS) | st.text(max_size=20) | st.lists(st.sampled_from(KEYS + [""]), max_size=4).map(".".join)


def _loads(**kw) -> Config | None:
    try:
        return load_config(**kw)
    except ConfigError:
        return None


@fuzz(300)
@given(st.lists(st.tuples(keys, raw_values), max_size=4))
def test_set_overrides_give_a_config_or_a_config_error(items):
    _loads(overrides=[f"{k}={v}" for k, v in items], env={})


@fuzz(300)
@given(
    st.dictionaries(
        st.text(max_size=24).map(lambda s: "RSTAR_" + s.upper())
        | keys.map(lambda k: "RSTAR_" + k.upper().replace(".", "__")),
        raw_values.filter(lambda v: "\x00" not in v),
        max_size=4,
    )
)
def test_environment_gives_a_config_or_a_config_error(env):
    _loads(env=env)


@fuzz(200)
@given(
    st.sampled_from([".toml", ".json"]),
    st.one_of(
        st.lists(st.tuples(keys, raw_values), max_size=4).map(lambda kv: "\n".join(f"{k} = {v}" for k, v in kv)),
        json_values.map(json.dumps),
        nested(st.just("1"), (("[", "]"),)).map(lambda v: f"[search]\nrollouts = {v}"),
        st.text(),
    ),
    st.booleans(),
)
def test_config_files_give_a_config_or_a_config_error(tmp_path_factory, suffix, text, binary):
    path = tmp_path_factory.mktemp("cfg") / f"rstar{suffix}"
    path.write_bytes(text.encode("utf-16") if binary else text.encode())
    _loads(path=path, env={})


@fuzz(200)
@given(
    st.integers(1, 10**6), st.sampled_from(["", " ", "  # a comment", "\n", "\nx = 1", "\n[t]", "\nrollouts = 7", "x"])
)
def test_a_value_is_read_whole(n, suffix):
    cfg = _loads(overrides=[f"search.rollouts={n}{suffix}"], env={})
    whole = suffix.strip() == "" or suffix.strip().startswith("#")
    assert (cfg is not None and cfg.search.rollouts == n) if whole else cfg is None
    cfg = _loads(env={"RSTAR_SEARCH__ROLLOUTS": f"{n}{suffix}"})
    assert (cfg is not None and cfg.search.rollouts == n) if whole else cfg is None
