"""Where the config and extra specs come from, and keys a host passed through unexpanded."""

import logging

from tiered_mcp.core.config import (
    default_config_path,
    env_value,
    is_unexpanded,
    load_config,
    spec_dirs,
    unexpanded_variables,
)
from tiered_mcp.serve.server import build_runner, tier_table, usable_tiers


def test_an_unexpanded_variable_counts_as_unset():
    for literal in ("${OPENAI_API_KEY}", "$OPENAI_API_KEY", " ${OPENAI_API_KEY:-} "):
        assert is_unexpanded(literal)
    assert not is_unexpanded("sk-proj-abc$def") and not is_unexpanded(None)
    env = {"OPENAI_API_KEY": "${OPENAI_API_KEY}", "OPENAI_BASE_URL": "${OPENAI_BASE_URL}"}
    config = load_config(None, env)
    openai = config.providers["openai"]
    assert not openai.has_key(env) and openai.api_key(env) is None
    assert openai.effective_base_url(env) == "https://api.openai.com/v1"
    assert env_value(env, "OPENAI_API_KEY") is None
    assert unexpanded_variables(config, env) == ["OPENAI_API_KEY", "OPENAI_BASE_URL"]


def test_with_an_unexpanded_key_the_server_warns_and_runs_on_the_local_tier(tmp_path, caplog):
    env = {"OPENAI_API_KEY": "${OPENAI_API_KEY}", "XDG_STATE_HOME": str(tmp_path)}
    with caplog.at_level(logging.WARNING, logger="tiered_mcp"):
        runner = build_runner(env=env)
    assert "OPENAI_API_KEY is the literal text '${OPENAI_API_KEY}'" in caplog.text
    assert not runner.usable("nano")
    runner.ledger.close()


def test_the_default_config_location_is_read_when_nothing_names_one(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert default_config_path(env) == tmp_path / "tiered-mcp" / "config.toml"
    assert load_config(None, env).source == "built-in defaults"
    (tmp_path / "tiered-mcp").mkdir()
    default_config_path(env).write_text('call_tier_ceiling = "nano"\nspecs = ["mine"]\n', encoding="utf-8")
    config = load_config(None, env)
    assert config.source == str(default_config_path(env)) and config.call_tier_ceiling == "nano"
    # Relative spec folders are relative to the config file.
    assert config.specs == [str(tmp_path / "tiered-mcp" / "mine")]


def test_spec_folders_come_from_config_then_environment_then_command_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('specs = ["/a"]\n', encoding="utf-8")
    config = load_config(cfg, {})
    assert spec_dirs(config, ("/d",), {"TIERED_MCP_SPECS": "/b:/c"}) == ("/a", "/b", "/c", "/d")
    assert spec_dirs(config, (), {"TIERED_MCP_SPECS": "${TIERED_MCP_SPECS}"}) == ("/a",)


def test_a_spec_folder_named_in_the_config_is_served(tmp_path):
    from pathlib import Path

    from tiered_mcp.specs.spec import default_specs_dir

    folder = tmp_path / "specs"
    folder.mkdir()
    text = Path(default_specs_dir() / "draft.yaml").read_text(encoding="utf-8").replace("name: draft", "name: haiku")
    (folder / "haiku.yaml").write_text(text, encoding="utf-8")
    cfg = tmp_path / "c.toml"
    cfg.write_text('specs = ["specs"]\n[tools.haiku]\ntier = "flagship"\n', encoding="utf-8")
    runner = build_runner(str(cfg), env={"XDG_STATE_HOME": str(tmp_path)})
    assert runner.specs.get("haiku") is not None
    runner.ledger.close()


def test_the_tier_table_routes_like_the_runner(specs):
    env: dict[str, str] = {}
    config = load_config(None, env)
    rows = {r["tool"]: r for r in tier_table(config, specs, usable_tiers(config, env, local_installed=True))}
    assert rows["classify"]["tier"] == "local" and rows["classify"]["input_price"] == 0
    assert rows["draft"]["ladder"] == [] and "OPENAI_API_KEY" in rows["draft"]["problem"]
    keyed = {"OPENAI_API_KEY": "sk-test"}
    rows = {r["tool"]: r for r in tier_table(config, specs, usable_tiers(config, keyed, local_installed=True))}
    assert rows["classify"]["tier"] == "nano"


def test_the_local_tier_hint_names_a_command_that_works_from_this_checkout():
    from tiered_mcp.core.config import INSTALL_LOCAL

    # Tests run from an editable install of the checkout: the hint is pip with the checkout's own path (the package
    # is not on PyPI, so `pip install 'tiered-mcp[local]'` would fail).
    assert "-m pip install -e '" in INSTALL_LOCAL and INSTALL_LOCAL.endswith("[local]'")
    assert "tiered-mcp[local]" not in INSTALL_LOCAL
