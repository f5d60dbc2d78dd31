"""Config loading: defaults < TOML < env < --set, and clear errors."""

import pytest

from app.up import PRESETS
from rstar.config import ConfigError, load_config


def test_precedence_toml_env_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[search]\nrollouts = 4\nn_children = 3\n[model]\ndevice = 'cpu'\n")
    cfg = load_config(f, ["search.n_children=6"], env={"RSTAR_SEARCH__ROLLOUTS": "12"})
    assert cfg.search.rollouts == 12 and cfg.search.n_children == 6 and cfg.model.device == "cpu"


def test_bad_values_and_unknown_keys_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="rollouts"):
        load_config(None, ["search.rollouts=0"], env={})
    with pytest.raises(ConfigError, match="nonsense"):
        load_config(None, ["search.nonsense=1"], env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["search.rollouts"], env={})


def test_openai_backend_needs_a_model_name():
    with pytest.raises(ConfigError, match="openai_model"):
        load_config(None, ["model.backend=openai"], env={})


def test_store_url_defaults_to_sqlite_under_data_dir(tmp_path):
    cfg = load_config(None, [f"data_dir={tmp_path}"], env={})
    assert cfg.store_url == f"sqlite:///{tmp_path.resolve()}/rstar.db"


def test_other_rstar_env_vars_are_not_config():
    cfg = load_config(None, env={"RSTAR_LOG_LEVEL": "DEBUG", "RSTAR_LOG_JSON": "1", "RSTAR_DATA_DIR": "/x"})
    assert str(cfg.data_dir) == "/x"


def test_preset_below_file_and_resolved_json_round_trip(tmp_path):
    from rstar.config import dump_config

    preset = tmp_path / "p.toml"
    preset.write_text("[search]\nrollouts = 3\nn_children = 2\n")
    user = tmp_path / "u.toml"
    user.write_text("[search]\nn_children = 7\n")
    cfg = load_config(user, env={}, preset=preset)
    assert cfg.search.rollouts == 3 and cfg.search.n_children == 7
    dump_config(cfg, tmp_path / "resolved.json")
    assert load_config(tmp_path / "resolved.json", env={}) == cfg


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS.glob("*.toml")))
def test_shipped_presets_load(name):
    """Every preset `rstar up --preset` offers is valid config (unknown keys are errors)."""
    import tomllib

    from app.up import preset_path

    path = preset_path(name)
    cfg = load_config(None, env={}, preset=path)
    for section, values in tomllib.loads(path.read_text()).items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (section, key)


def test_text_fields_keep_what_was_written_and_numbers_stay_numbers():
    cfg = load_config(
        None, ["actor.id=42", 'model.policy="a b"'], env={"RSTAR_API__TOKEN": "123456", "RSTAR_SEARCH__ROLLOUTS": "16"}
    )
    assert cfg.api.token == "123456" and cfg.actor.id == "42" and cfg.model.policy == "a b"
    assert cfg.search.rollouts == 16


def test_a_misspelled_section_in_the_environment_is_an_error():
    with pytest.raises(ConfigError, match="RSTAR_SERACH__ROLLOUTS: no config section 'serach'"):
        load_config(None, env={"RSTAR_SERACH__ROLLOUTS": "4"})


def test_each_value_names_the_last_layer_that_set_it(tmp_path):
    from rstar.config import config_layers, value_sources

    f = tmp_path / "c.toml"
    f.write_text("data_dir = 'x'\n[search]\nrollouts = 4\nn_children = 3\n")
    src = value_sources(
        config_layers(f, ["search.n_children=6"], env={"RSTAR_TRAIN__LR": "0.1"}, preset=PRESETS / "nano.toml")
    )
    assert src["search.rollouts"] == f"file {f}" and src["search.n_children"] == "--set"
    assert src["train.lr"] == "env" and src["data_dir"] == f"file {f}" and src["model.policy"] == "preset nano"
    assert "search.c_uct" not in src


def test_every_field_is_documented():
    from rstar.config import SECTIONS, Config

    fields = [(s, n, f) for s in SECTIONS for n, f in Config.model_fields[s].annotation.model_fields.items()]
    assert len(fields) > 100 and [(s, n) for s, n, f in fields if not f.description] == []
