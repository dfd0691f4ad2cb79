import pytest

from tiered_mcp.core.config import config_from_dict, default_state_dir, load_config
from tiered_mcp.core.errors import ConfigError

EXAMPLES = sorted((__import__("pathlib").Path(__file__).parents[1] / "examples").glob("config.*.toml"))


def test_defaults_are_openai_with_seed_prices():
    cfg = load_config(env={})
    assert {t: (c.model, c.input_price, c.output_price) for t, c in cfg.tiers.items()} == {
        "local": ("use-multilingual-v3", 0.0, 0.0),
        "nano": ("gpt-5.4-nano", 0.20, 1.25), "mini": ("gpt-5.4-mini", 0.75, 4.50),
        "flagship": ("gpt-5.4", 2.50, 15.00)}
    p = cfg.providers["openai"]
    assert p.api_key_env == "OPENAI_API_KEY"
    assert p.effective_base_url({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}) == "http://127.0.0.1:1/v1"
    assert p.effective_base_url({}) == "https://api.openai.com/v1"


def test_a_file_merges_over_the_defaults(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('store_inputs = true\n[tiers.mini]\nmax_output_tokens = 900\n', encoding="utf-8")
    cfg = load_config(f)
    assert cfg.store_inputs and cfg.tiers["mini"].max_output_tokens == 900
    assert cfg.tiers["mini"].model == "gpt-5.4-mini" and cfg.tiers["mini"].input_price == 0.75
    assert cfg.source == str(f)


def test_a_tier_with_its_own_model_does_not_inherit_prices():
    cfg = config_from_dict({"tiers": {"nano": {"model": "llama3.2"}}})
    assert cfg.tiers["nano"].provider == "openai" and cfg.tiers["nano"].input_price is None


def test_the_env_var_names_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('call_tier_ceiling = "flagship"\n', encoding="utf-8")
    assert load_config(env={"TIERED_MCP_CONFIG": str(f)}).call_tier_ceiling == "flagship"


@pytest.mark.parametrize("text, words", [
    ('colour = "blue"', "colour: unknown key"),
    ('call_tier_ceiling = "huge"', "call_tier_ceiling: Input should be"),
    ('[tiers.nano]\nprovider = "x"\nmodel = "m"', "tiers.nano.provider is 'x'"),
    ('[tiers.mini]\ntemperature = 5', "tiers.mini.temperature: Input should be less than or equal to 2"),
    ("store_inputs = ", "not valid TOML"),
])
def test_config_errors_name_the_key(tmp_path, text, words):
    f = tmp_path / "c.toml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=None) as err:
        load_config(f)
    assert words in str(err.value) and str(f) in str(err.value)


def test_a_missing_file_says_how_to_fix_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_ladder_skips_unconfigured_tiers():
    cfg = config_from_dict({})
    assert cfg.ladder("local", "flagship") == ["local", "nano", "mini", "flagship"]
    assert config_from_dict({"tiers": {"mini": {"model": "m"}}}).ladder("nano", "mini") == ["nano", "mini"]
    assert cfg.ladder("nano", "mini") == ["nano", "mini"]


def test_state_dir_follows_xdg():
    assert str(default_state_dir({"XDG_STATE_HOME": "/x"})).endswith("tiered-mcp")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = load_config(path, env={})
    assert {"nano", "mini", "flagship"} <= set(cfg.tiers)
