"""Config loading: defaults < TOML < env < --set, and clear errors."""

import pytest

from rstar.config import ConfigError, load_config
from rstar.up import PRESETS


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

    from rstar.up import preset_path

    path = preset_path(name)
    cfg = load_config(None, env={}, preset=path)
    for section, values in tomllib.loads(path.read_text()).items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (section, key)
