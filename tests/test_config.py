"""Unit tests of bridge.config: every setting of SPEC §2, its default, its errors and its sources."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.config import (
    DISABLED_WARNING,
    FLAG_VARIABLES,
    BedrockSettings,
    ConfigError,
    ProviderSettings,
    database_path_from_url,
    load_settings,
    resolve_database_path,
)

SECRET = "sk-TOPSECRET-0123456789abcdef"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
P0 = "CODER_AIBRIDGE_PROVIDER_0_"
P1 = "CODER_AIBRIDGE_PROVIDER_1_"


def config_error(env=None, flags=None, config_path=None) -> str:
    """The one-line message of the ConfigError that loading raises; checks it holds no secret."""
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env or {}, flags=flags, config_path=config_path)
    message = str(caught.value)
    assert "\n" not in message
    assert SECRET not in message and AWS_SECRET not in message
    return message


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "bridge.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- defaults ----------------------------------------------------------------------------------


def test_defaults_of_every_top_level_setting():
    settings = load_settings(env={})
    assert settings.enabled is False
    assert settings.providers == ()
    assert settings.retention == 60 * 86400
    assert settings.structured_logging is False
    assert settings.allow_byok is True
    assert settings.max_concurrency == 0
    assert settings.rate_limit == 0
    breaker = settings.circuit_breaker
    assert (breaker.enabled, breaker.failure_threshold, breaker.interval, breaker.timeout, breaker.max_requests) == (
        False, 5, 10.0, 30.0, 3,
    )
    assert settings.dump_dir is None
    assert settings.max_body_size == 64 * 1024 * 1024
    assert settings.database_path == "aibridge.db"
    assert settings.log_human == "/dev/stderr"
    assert settings.log_json is None
    assert settings.upstream_connect_timeout == 10.0
    assert settings.upstream_read_timeout == 300.0


def test_disabled_gateway_warns_and_enabled_one_does_not():
    assert DISABLED_WARNING == "AI Gateway is disabled (set CODER_AIBRIDGE_ENABLED=true)"
    assert DISABLED_WARNING in load_settings(env={}).warnings
    enabled = load_settings(env={"CODER_AIBRIDGE_ENABLED": "true", "CODER_AIBRIDGE_OPENAI_KEY": SECRET})
    assert enabled.enabled is True
    assert enabled.warnings == ()


def test_enabled_without_providers_warns():
    warnings = load_settings(env={"CODER_AIBRIDGE_ENABLED": "true"}).warnings
    assert any("no AI providers are configured" in w for w in warnings)


def test_indexed_provider_defaults():
    env = {P0 + "TYPE": "openai", P1 + "TYPE": "anthropic", "CODER_AIBRIDGE_PROVIDER_2_TYPE": "copilot"}
    settings = load_settings(env=env)
    openai, anthropic, copilot = settings.providers
    assert openai == ProviderSettings(type="openai", name="openai", base_url="https://api.openai.com/v1/")
    assert openai.max_retries == 2 and openai.include_usage is True and openai.key is None
    assert anthropic.name == "anthropic" and anthropic.base_url == "https://api.anthropic.com/"
    assert anthropic.bedrock is None
    assert copilot.name == "copilot" and copilot.base_url == "https://api.individual.githubcopilot.com/"


# --- value parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["true", "TRUE", "1", "yes", "On"])
def test_true_spellings(raw):
    assert load_settings(env={"CODER_AIBRIDGE_STRUCTURED_LOGGING": raw}).structured_logging is True


@pytest.mark.parametrize("raw", ["false", "False", "0", "no", "OFF"])
def test_false_spellings(raw):
    assert load_settings(env={"CODER_AIBRIDGE_ALLOW_BYOK": raw}).allow_byok is False


def test_bad_boolean_names_variable_and_value():
    message = config_error({"CODER_AIBRIDGE_ENABLED": "maybe"})
    assert message.startswith("CODER_AIBRIDGE_ENABLED: expected true or false")
    assert "got 'maybe'" in message


@pytest.mark.parametrize(
    ("raw", "seconds"), [("90d", 90 * 86400), ("720h", 720 * 3600), ("30m", 1800), ("1h30m", 5400), ("0", 0)]
)
def test_retention_durations(raw, seconds):
    assert load_settings(env={"CODER_AIBRIDGE_RETENTION": raw}).retention == seconds


def test_bad_duration():
    message = config_error({"CODER_AIBRIDGE_RETENTION": "90 days"})
    assert message.startswith("CODER_AIBRIDGE_RETENTION: expected a duration")
    assert "got '90 days'" in message


def test_circuit_breaker_settings_and_zero_timeout_is_rejected():
    settings = load_settings(env={
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED": "true",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "7",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_INTERVAL": "1m",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT": "45s",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_MAX_REQUESTS": "1",
    })
    breaker = settings.circuit_breaker
    assert (breaker.enabled, breaker.failure_threshold, breaker.interval, breaker.timeout, breaker.max_requests) == (
        True, 7, 60.0, 45.0, 1,
    )
    assert config_error({"CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT": "0"}).startswith(
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT: expected a duration"
    )
    assert "got '0'" in config_error({"CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "0"})


def test_upstream_timeouts():
    settings = load_settings(env={
        "CODER_AIBRIDGE_UPSTREAM_CONNECT_TIMEOUT": "2.5s", "CODER_AIBRIDGE_UPSTREAM_READ_TIMEOUT": "10m",
    })
    assert (settings.upstream_connect_timeout, settings.upstream_read_timeout) == (2.5, 600.0)
    assert config_error({"CODER_AIBRIDGE_UPSTREAM_READ_TIMEOUT": "soon"}).startswith(
        "CODER_AIBRIDGE_UPSTREAM_READ_TIMEOUT: expected a duration"
    )


@pytest.mark.parametrize(("raw", "size"), [("10MB", 10_000_000), ("512KiB", 512 * 1024), ("1048576", 1048576)])
def test_max_body_size(raw, size):
    assert load_settings(env={"CODER_AIBRIDGE_MAX_BODY_SIZE": raw}).max_body_size == size


@pytest.mark.parametrize("raw", ["big", "0", "-5MB"])
def test_bad_size(raw):
    message = config_error({"CODER_AIBRIDGE_MAX_BODY_SIZE": raw})
    assert message.startswith("CODER_AIBRIDGE_MAX_BODY_SIZE: expected a size")
    assert f"got {raw!r}" in message


def test_concurrency_and_rate_limit():
    settings = load_settings(env={"CODER_AIBRIDGE_MAX_CONCURRENCY": "50", "CODER_AIBRIDGE_RATE_LIMIT": "2.5"})
    assert (settings.max_concurrency, settings.rate_limit) == (50, 2.5)


@pytest.mark.parametrize(("variable", "raw"), [
    ("CODER_AIBRIDGE_MAX_CONCURRENCY", "-1"),
    ("CODER_AIBRIDGE_MAX_CONCURRENCY", "1.5"),
    ("CODER_AIBRIDGE_RATE_LIMIT", "-0.5"),
    ("CODER_AIBRIDGE_RATE_LIMIT", "nan"),
    ("CODER_AIBRIDGE_RATE_LIMIT", "fast"),
])
def test_negative_or_non_numeric_limits(variable, raw):
    message = config_error({variable: raw})
    assert message.startswith(f"{variable}: expected a")
    assert ">= 0" in message and f"got {raw!r}" in message


def test_values_are_stripped_and_empty_means_default():
    settings = load_settings(env={"CODER_AIBRIDGE_RETENTION": " 7d\n", "CODER_AIBRIDGE_MAX_BODY_SIZE": ""})
    assert settings.retention == 7 * 86400
    assert settings.max_body_size == 64 * 1024 * 1024


def test_log_destinations():
    settings = load_settings(env={"CODER_LOGGING_HUMAN": "/var/log/bridge.log", "CODER_LOGGING_JSON": "/dev/stderr"})
    assert (settings.log_human, settings.log_json) == ("/var/log/bridge.log", "/dev/stderr")
    assert load_settings(env={"CODER_LOGGING_HUMAN": ""}).log_human is None  # empty turns human logs off


def test_dump_dir_is_inherited_by_providers_unless_they_set_their_own():
    settings = load_settings(env={
        "CODER_AIBRIDGE_DUMP_DIR": "/tmp/dumps",
        P0 + "TYPE": "openai",
        P1 + "TYPE": "anthropic", P1 + "DUMP_DIR": "/tmp/anthropic",
    })
    assert settings.dump_dir == "/tmp/dumps"
    assert [p.dump_dir for p in settings.providers] == ["/tmp/dumps", "/tmp/anthropic"]


# --- precedence and sources --------------------------------------------------------------------


def test_precedence_flag_over_env_over_yaml_over_default(tmp_path):
    path = write_yaml(tmp_path, """
        aibridge:
          retention: 30d
          max_concurrency: 3
          rate_limit: 4
    """)
    env = {"CODER_AIBRIDGE_RETENTION": "20d", "CODER_AIBRIDGE_MAX_CONCURRENCY": "2"}
    flags = {"CODER_AIBRIDGE_RETENTION": "10d"}
    settings = load_settings(env=env, flags=flags, config_path=path)
    assert settings.retention == 10 * 86400  # flag
    assert settings.max_concurrency == 2  # env
    assert settings.rate_limit == 4  # YAML
    assert settings.max_body_size == 64 * 1024 * 1024  # default


def test_empty_flag_resets_a_value_set_in_env():
    settings = load_settings(env={"CODER_AIBRIDGE_DUMP_DIR": "/tmp/dumps"}, flags={"CODER_AIBRIDGE_DUMP_DIR": ""})
    assert settings.dump_dir is None


def test_flag_errors_name_the_variable_and_the_flag():
    message = config_error(flags={"CODER_AIBRIDGE_RETENTION": "soon"})
    assert message.startswith("CODER_AIBRIDGE_RETENTION (from --aibridge-retention): expected a duration")


def test_flag_variables_are_derived_from_the_settings():
    assert FLAG_VARIABLES["--aibridge-openai-key"] == "CODER_AIBRIDGE_OPENAI_KEY"
    assert FLAG_VARIABLES["--aibridge-bedrock-access-key-secret"] == "CODER_AIBRIDGE_BEDROCK_ACCESS_KEY_SECRET"
    assert FLAG_VARIABLES["--aibridge-retention"] == "CODER_AIBRIDGE_RETENTION"
    assert FLAG_VARIABLES["--aibridge-upstream-read-timeout"] == "CODER_AIBRIDGE_UPSTREAM_READ_TIMEOUT"
    assert FLAG_VARIABLES["--log-human"] == "CODER_LOGGING_HUMAN"
    assert FLAG_VARIABLES["--log-json"] == "CODER_LOGGING_JSON"
    assert FLAG_VARIABLES["--config"] == "CODER_CONFIG_PATH"
    # every flag maps to a variable that load_settings knows: none of them yields an "unknown" warning
    flags = {variable: "" for variable in FLAG_VARIABLES.values()}
    assert not any("unknown" in w for w in load_settings(env={}, flags=flags).warnings)


# --- YAML --------------------------------------------------------------------------------------


def test_yaml_settings_with_native_values(tmp_path):
    path = write_yaml(tmp_path, f"""
        aibridge:
          enabled: true
          retention: 90d
          structured_logging: yes
          max_concurrency: 8
          openai_key: {SECRET}
          openai_base_url: https://litellm.example.com/v1
          bedrock_region: eu-west-1
        logging:
          human: /var/log/human.log
          json: /var/log/bridge.json
    """)
    settings = load_settings(env={}, config_path=path)
    assert settings.enabled is True and settings.structured_logging is True
    assert settings.retention == 90 * 86400 and settings.max_concurrency == 8
    assert (settings.log_human, settings.log_json) == ("/var/log/human.log", "/var/log/bridge.json")
    openai, anthropic = settings.providers
    assert (openai.name, openai.key, openai.base_url) == ("openai", SECRET, "https://litellm.example.com/v1/")
    assert anthropic.name == "anthropic" and anthropic.bedrock.region == "eu-west-1"


def test_yaml_path_from_env_and_from_flags(tmp_path):
    path = write_yaml(tmp_path, "aibridge:\n  retention: 5d\n")
    assert load_settings(env={"CODER_CONFIG_PATH": path}).retention == 5 * 86400
    assert load_settings(env={}, flags={"CODER_CONFIG_PATH": path}).retention == 5 * 86400


def test_yaml_providers_list_and_env_on_top(tmp_path):
    path = write_yaml(tmp_path, """
        aibridge:
          providers:
            - type: anthropic
              name: anthropic-corp
              key: yaml-key-corp
              base_url: https://llm-proxy.internal.example.com/anthropic
            - type: openai
              name: azure-openai
              include_usage: false
              max_retries: 5
    """)
    env = {
        P0 + "KEY": "env-key-corp",  # overrides providers[0].key
        "CODER_AIBRIDGE_PROVIDER_2_TYPE": "copilot",  # appended after the YAML ones
    }
    corp, azure, copilot = load_settings(env=env, config_path=path).providers
    assert (corp.type, corp.name, corp.key) == ("anthropic", "anthropic-corp", "env-key-corp")
    assert corp.base_url == "https://llm-proxy.internal.example.com/anthropic/"
    assert (azure.name, azure.include_usage, azure.max_retries) == ("azure-openai", False, 5)
    assert copilot.type == "copilot"


def test_env_alias_overrides_yaml_canonical_key(tmp_path):
    path = write_yaml(tmp_path, "aibridge:\n  providers:\n    - {type: openai, key: from-yaml}\n")
    (provider,) = load_settings(env={P0 + "KEYS": "from-env"}, config_path=path).providers
    assert provider.key == "from-env"


def test_yaml_errors_name_the_variable_and_the_yaml_key(tmp_path):
    path = write_yaml(tmp_path, "aibridge:\n  providers:\n    - {type: openai, max_retries: many}\n")
    message = config_error(config_path=path)
    assert message.startswith(
        f"{P0}MAX_RETRIES (from aibridge.providers[0].max_retries in {path}): expected a whole number"
    )


def test_unknown_yaml_keys_warn(tmp_path):
    path = write_yaml(tmp_path, """
        aibridge:
          retnetion: 90d
          providers:
            - {type: openai, tpye: anthropic}
        networking:
          port: 80
    """)
    warnings = load_settings(env={}, config_path=path).warnings
    assert any(
        "aibridge.retnetion" in w and "unknown setting" in w and "CODER_AIBRIDGE_RETENTION" in w for w in warnings
    )
    assert any("aibridge.providers[0].tpye" in w and "unknown provider setting 'TPYE'" in w for w in warnings)
    assert any("unknown top-level key 'networking'" in w for w in warnings)


def test_invalid_yaml_names_the_file_without_quoting_it(tmp_path):
    path = write_yaml(tmp_path, f"aibridge:\n  openai_key: {SECRET}: oops\n")
    message = config_error(config_path=path)
    assert message.startswith(f"{path}: invalid YAML at line 2")


def test_yaml_of_the_wrong_shape(tmp_path):
    assert "expected a mapping at the top level" in config_error(config_path=write_yaml(tmp_path, "- a\n- b\n"))
    path = write_yaml(tmp_path, "aibridge:\n  providers: {type: openai}\n")
    assert config_error(config_path=path) == f"{path}: expected a list at aibridge.providers, got a dict"
    path = write_yaml(tmp_path, "aibridge:\n  retention: [1d]\n")
    assert config_error(config_path=path).endswith("expected a single value, got a list")


def test_unreadable_config_file(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    message = config_error(config_path=missing)
    assert message.startswith(f"{missing}: cannot read the config file")


def test_empty_yaml_file_is_fine(tmp_path):
    assert load_settings(env={}, config_path=write_yaml(tmp_path, "")).retention == 60 * 86400


# --- legacy providers --------------------------------------------------------------------------


def test_legacy_openai_exists_only_with_a_key():
    assert load_settings(env={"CODER_AIBRIDGE_OPENAI_BASE_URL": "https://x.example.com/v1"}).providers == ()
    (openai,) = load_settings(env={"CODER_AIBRIDGE_OPENAI_KEY": SECRET}).providers
    assert openai == ProviderSettings(type="openai", name="openai", base_url="https://api.openai.com/v1/", key=SECRET)


def test_legacy_setting_without_its_provider_warns():
    warnings = load_settings(env={"CODER_AIBRIDGE_OPENAI_BASE_URL": "https://x.example.com/v1"}).warnings
    assert any(
        w.startswith("CODER_AIBRIDGE_OPENAI_BASE_URL: ignored") and "CODER_AIBRIDGE_OPENAI_KEY" in w for w in warnings
    )


def test_legacy_anthropic_with_key():
    (anthropic,) = load_settings(env={
        "CODER_AIBRIDGE_ANTHROPIC_KEY": SECRET, "CODER_AIBRIDGE_ANTHROPIC_BASE_URL": "http://proxy.local:8080",
    }).providers
    assert (anthropic.type, anthropic.name, anthropic.key) == ("anthropic", "anthropic", SECRET)
    assert anthropic.base_url == "http://proxy.local:8080/"
    assert anthropic.bedrock is None


def test_legacy_anthropic_through_bedrock_without_anthropic_key():
    (anthropic,) = load_settings(env={
        "CODER_AIBRIDGE_BEDROCK_REGION": "us-west-2",
        "CODER_AIBRIDGE_BEDROCK_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE",
        "CODER_AIBRIDGE_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET,
        "CODER_AIBRIDGE_BEDROCK_MODEL": "us.anthropic.claude-sonnet-4-5-v1:0",
        "CODER_AIBRIDGE_BEDROCK_SMALL_FAST_MODEL": "us.anthropic.claude-haiku-4-5-v1:0",
    }).providers
    assert anthropic.name == "anthropic" and anthropic.key is None
    assert anthropic.bedrock == BedrockSettings(
        region="us-west-2", base_url=None, access_key="AKIAIOSFODNN7EXAMPLE", access_key_secret=AWS_SECRET,
        model="us.anthropic.claude-sonnet-4-5-v1:0", small_fast_model="us.anthropic.claude-haiku-4-5-v1:0",
    )


def test_legacy_and_indexed_providers_together():
    settings = load_settings(env={
        "CODER_AIBRIDGE_ANTHROPIC_KEY": "ant-key",
        "CODER_AIBRIDGE_OPENAI_KEY": "oai-key",
        P0 + "TYPE": "openai", P0 + "NAME": "azure-openai", P0 + "KEY": "azure-key",
    })
    assert [(p.type, p.name, p.key) for p in settings.providers] == [
        ("openai", "openai", "oai-key"), ("anthropic", "anthropic", "ant-key"), ("openai", "azure-openai", "azure-key"),
    ]
    assert settings.provider("azure-openai").key == "azure-key"
    assert settings.provider("nope") is None


# --- indexed providers -------------------------------------------------------------------------


def test_seed_example_providers():
    env = {
        P0 + "TYPE": "anthropic", P0 + "NAME": "anthropic-corp", P0 + "KEY": "sk-ant-corp-xxx",
        P0 + "BASE_URL": "https://llm-proxy.internal.example.com/anthropic",
        P1 + "TYPE": "anthropic", P1 + "NAME": "anthropic-direct", P1 + "KEY": "sk-ant-direct-yyy",
        "CODER_AIBRIDGE_PROVIDER_2_TYPE": "openai", "CODER_AIBRIDGE_PROVIDER_2_NAME": "azure-openai",
        "CODER_AIBRIDGE_PROVIDER_2_KEY": "azure-key-zzz",
        "CODER_AIBRIDGE_PROVIDER_2_BASE_URL": "https://my-deployment.openai.azure.com/",
        "CODER_AIBRIDGE_PROVIDER_3_TYPE": "anthropic", "CODER_AIBRIDGE_PROVIDER_3_NAME": "anthropic-bedrock",
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_REGION": "us-west-2",
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE",
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET,
    }
    settings = load_settings(env=env)
    assert [p.name for p in settings.providers] == [
        "anthropic-corp", "anthropic-direct", "azure-openai", "anthropic-bedrock",
    ]
    assert settings.provider("anthropic-corp").base_url == "https://llm-proxy.internal.example.com/anthropic/"
    assert settings.provider("azure-openai").base_url == "https://my-deployment.openai.azure.com/"
    bedrock = settings.provider("anthropic-bedrock").bedrock
    assert (bedrock.region, bedrock.access_key, bedrock.access_key_secret) == (
        "us-west-2", "AKIAIOSFODNN7EXAMPLE", AWS_SECRET,
    )
    assert settings.warnings == (DISABLED_WARNING,)


def test_two_providers_of_one_type_with_distinct_names():
    env = {P0 + "TYPE": "openai", P0 + "NAME": "team-a", P1 + "TYPE": "openai", P1 + "NAME": "team-b"}
    settings = load_settings(env=env)
    assert [(p.type, p.name) for p in settings.providers] == [("openai", "team-a"), ("openai", "team-b")]


def test_indices_sort_numerically():
    env = {f"CODER_AIBRIDGE_PROVIDER_{i}_TYPE": "openai" for i in range(11)}
    env.update({f"CODER_AIBRIDGE_PROVIDER_{i}_NAME": f"p{i}" for i in range(11)})
    assert [p.name for p in load_settings(env=env).providers] == [f"p{i}" for i in range(11)]


def test_type_is_case_insensitive():
    (provider,) = load_settings(env={P0 + "TYPE": "OpenAI"}).providers
    assert (provider.type, provider.name) == ("openai", "openai")


def test_index_not_a_number():
    message = config_error({"CODER_AIBRIDGE_PROVIDER_X_TYPE": "openai"})
    assert message.startswith("CODER_AIBRIDGE_PROVIDER_X_TYPE: provider index 'X' is not a number")


def test_index_with_leading_zero_is_not_a_plain_number():
    message = config_error({P0 + "TYPE": "openai", "CODER_AIBRIDGE_PROVIDER_01_TYPE": "openai"})
    assert message.startswith("CODER_AIBRIDGE_PROVIDER_01_TYPE: provider index '01' is not a number")


def test_indices_not_contiguous_names_the_missing_one():
    env = {f"CODER_AIBRIDGE_PROVIDER_{i}_TYPE": "openai" for i in (0, 1, 3, 10)}
    message = config_error(env)
    assert message.startswith("CODER_AIBRIDGE_PROVIDER_2_TYPE: not set, but provider 3 is configured")
    assert "contiguous from 0" in message and "(found 0, 1, 3, 10)" in message


def test_indices_must_start_at_zero():
    assert config_error({P1 + "TYPE": "openai"}).startswith(f"{P0}TYPE: not set, but provider 1 is configured")


def test_missing_type():
    message = config_error({P0 + "NAME": "x", P0 + "KEY": SECRET})
    assert message == f"{P0}TYPE: required for provider 0 (openai, anthropic or copilot)"


def test_unknown_type():
    message = config_error({P1 + "TYPE": "foo", P0 + "TYPE": "openai"})
    assert message == f"{P1}TYPE: unknown provider type 'foo' (expected openai, anthropic or copilot)"


def test_unknown_suffix_is_a_warning_naming_it():
    settings = load_settings(env={P0 + "TYPE": "openai", P0 + "BASE_ULR": "https://x.example.com"})
    assert settings.providers[0].base_url == "https://api.openai.com/v1/"
    assert f"{P0}BASE_ULR: unknown provider setting 'BASE_ULR', ignored (did you mean BASE_URL?)" in settings.warnings


def test_typo_in_type_still_fails_for_missing_type_and_names_the_typo():
    message = config_error({P0 + "TPYE": "openai"})
    assert message.startswith(f"{P0}TYPE: required")
    assert f"{P0}TPYE" in message


def test_unknown_variable_warns():
    warnings = load_settings(env={"CODER_AIBRIDGE_RETENTON": "1d", "CODER_OTHER_THING": "x"}).warnings
    assert "CODER_AIBRIDGE_RETENTON: unknown setting, ignored (did you mean CODER_AIBRIDGE_RETENTION?)" in warnings
    assert not any("CODER_OTHER_THING" in w for w in warnings)  # only CODER_AIBRIDGE_* belongs to us


@pytest.mark.parametrize("name", ["Anthropic", "team_a", "-a", "a--b", "a-", "a b"])
def test_bad_name(name):
    message = config_error({P0 + "TYPE": "openai", P0 + "NAME": name})
    assert message.startswith(f"{P0}NAME: expected a name of lowercase letters and digits")
    assert f"got {name!r}" in message


@pytest.mark.parametrize("name", ["interceptions", "clients", "usage", "tools"])
def test_reserved_name(name):
    assert "reserved" in config_error({P0 + "TYPE": "openai", P0 + "NAME": name})


def test_duplicate_explicit_name():
    env = {P0 + "TYPE": "openai", P0 + "NAME": "shared", P1 + "TYPE": "anthropic", P1 + "NAME": "shared"}
    message = config_error(env)
    assert message == f"{P1}NAME: duplicate provider name 'shared' (provider 0 has it too)"


def test_two_unnamed_providers_of_one_type_collide():
    message = config_error({P0 + "TYPE": "anthropic", P1 + "TYPE": "anthropic"})
    assert message.startswith(f"{P1}NAME (not set, so the name is the type): duplicate provider name 'anthropic'")
    assert "two providers of one type without a NAME collide" in message


def test_legacy_and_indexed_with_the_same_name():
    message = config_error({"CODER_AIBRIDGE_OPENAI_KEY": SECRET, P0 + "TYPE": "openai"})
    assert message.startswith(f"{P0}NAME (not set, so the name is the type): provider name 'openai' is already used")
    assert "CODER_AIBRIDGE_OPENAI_KEY" in message and "remove one or the other" in message


def test_legacy_bedrock_and_indexed_named_anthropic():
    env = {"CODER_AIBRIDGE_BEDROCK_REGION": "us-east-1", P0 + "TYPE": "openai", P0 + "NAME": "anthropic"}
    message = config_error(env)
    assert message.startswith(f"{P0}NAME: provider name 'anthropic' is already used")
    assert "CODER_AIBRIDGE_BEDROCK_REGION" in message


@pytest.mark.parametrize("ptype", ["openai", "copilot"])
def test_bedrock_setting_on_non_anthropic_provider(ptype):
    message = config_error({P0 + "TYPE": ptype, P0 + "BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET})
    assert message == (
        f"{P0}BEDROCK_ACCESS_KEY_SECRET: Bedrock settings apply only to anthropic providers, this one is {ptype}"
    )


def test_key_on_copilot():
    message = config_error({P0 + "TYPE": "copilot", P0 + "KEY": SECRET})
    assert message.startswith(f"{P0}KEY: copilot providers take no key")
    assert "BYOK" in message


def test_key_and_alias_with_different_values():
    message = config_error({P0 + "TYPE": "openai", P0 + "KEY": SECRET, P0 + "KEYS": SECRET + "-other"})
    assert f"{P0}KEYS: conflicts with {P0}KEY" in message
    assert "different values" in message


def test_key_and_alias_with_the_same_value_are_fine():
    (provider,) = load_settings(env={P0 + "TYPE": "openai", P0 + "KEY": SECRET, P0 + "KEYS": SECRET}).providers
    assert provider.key == SECRET


def test_bedrock_aliases():
    (provider,) = load_settings(env={
        P0 + "TYPE": "anthropic", P0 + "BEDROCK_REGION": "us-east-1",
        P0 + "BEDROCK_ACCESS_KEYS": "AKIAIOSFODNN7EXAMPLE", P0 + "BEDROCK_ACCESS_KEY_SECRETS": AWS_SECRET,
    }).providers
    assert (provider.bedrock.access_key, provider.bedrock.access_key_secret) == ("AKIAIOSFODNN7EXAMPLE", AWS_SECRET)


def test_bedrock_credentials_come_in_pairs():
    env = {P0 + "TYPE": "anthropic", P0 + "BEDROCK_REGION": "us-east-1", P0 + "BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET}
    message = config_error(env)
    assert message == f"{P0}BEDROCK_ACCESS_KEY: required when {P0}BEDROCK_ACCESS_KEY_SECRET is set"


def test_bedrock_key_without_secret():
    env = {P0 + "TYPE": "anthropic", P0 + "BEDROCK_REGION": "us-east-1", P0 + "BEDROCK_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE"}
    assert config_error(env) == f"{P0}BEDROCK_ACCESS_KEY_SECRET: required when {P0}BEDROCK_ACCESS_KEY is set"


def test_bedrock_without_keys_uses_the_aws_credential_chain():
    (provider,) = load_settings(env={P0 + "TYPE": "anthropic", P0 + "BEDROCK_REGION": "us-east-1"}).providers
    assert provider.bedrock == BedrockSettings(region="us-east-1")


def test_bedrock_base_url_that_names_no_region_needs_one():
    env = {P0 + "TYPE": "anthropic", P0 + "BEDROCK_BASE_URL": "https://bedrock-proxy.internal.example.com/aws"}
    assert config_error(env).startswith(f"{P0}BEDROCK_REGION: required: {P0}BEDROCK_BASE_URL does not name an AWS region")
    (provider,) = load_settings(env={**env, P0 + "BEDROCK_REGION": "eu-west-3"}).providers
    assert provider.bedrock == BedrockSettings(region="eu-west-3", base_url="https://bedrock-proxy.internal.example.com/aws/")


def test_legacy_bedrock_base_url_and_models():
    (anthropic,) = load_settings(env={
        "CODER_AIBRIDGE_BEDROCK_BASE_URL": "https://bedrock-runtime.ap-northeast-1.amazonaws.com",
        "CODER_AIBRIDGE_BEDROCK_MODEL": "apac.anthropic.claude-sonnet-4-5-v1:0",
        "CODER_AIBRIDGE_BEDROCK_SMALL_FAST_MODEL": "apac.anthropic.claude-haiku-4-5-v1:0",
    }).providers
    assert anthropic.bedrock == BedrockSettings(
        region="ap-northeast-1", base_url="https://bedrock-runtime.ap-northeast-1.amazonaws.com/",
        model="apac.anthropic.claude-sonnet-4-5-v1:0", small_fast_model="apac.anthropic.claude-haiku-4-5-v1:0")


def test_legacy_bedrock_setting_without_region_or_base_url():
    assert config_error({"CODER_AIBRIDGE_ANTHROPIC_KEY": "k", "CODER_AIBRIDGE_BEDROCK_MODEL": "m"}) == (
        "CODER_AIBRIDGE_BEDROCK_MODEL: has no effect without CODER_AIBRIDGE_BEDROCK_REGION or "
        "CODER_AIBRIDGE_BEDROCK_BASE_URL")


def test_bedrock_setting_without_region_or_base_url():
    message = config_error({P0 + "TYPE": "anthropic", P0 + "BEDROCK_MODEL": "m"})
    assert message == f"{P0}BEDROCK_MODEL: has no effect without {P0}BEDROCK_REGION or {P0}BEDROCK_BASE_URL"


def test_bedrock_region_read_from_an_aws_base_url():
    url = "https://bedrock-runtime.eu-central-1.amazonaws.com"
    (provider,) = load_settings(env={P0 + "TYPE": "anthropic", P0 + "BEDROCK_BASE_URL": url}).providers
    assert provider.bedrock == BedrockSettings(region="eu-central-1", base_url=url + "/")


def test_bad_bedrock_region():
    assert config_error({P0 + "TYPE": "anthropic", P0 + "BEDROCK_REGION": "US West 2"}).startswith(
        f"{P0}BEDROCK_REGION: expected an AWS region such as us-west-2"
    )


def test_max_retries_and_include_usage():
    env = {P0 + "TYPE": "openai", P0 + "MAX_RETRIES": "0", P0 + "INCLUDE_USAGE": "false"}
    (provider,) = load_settings(env=env).providers
    assert (provider.max_retries, provider.include_usage) == (0, False)
    assert config_error({P0 + "TYPE": "openai", P0 + "MAX_RETRIES": "-1"}).startswith(
        f"{P0}MAX_RETRIES: expected a whole number >= 0, got '-1'"
    )


def test_include_usage_on_anthropic_warns():
    warnings = load_settings(env={P0 + "TYPE": "anthropic", P0 + "INCLUDE_USAGE": "false"}).warnings
    assert f"{P0}INCLUDE_USAGE: applies to openai providers only, ignored for anthropic" in warnings


def test_keyless_provider_without_byok_warns():
    warnings = load_settings(env={"CODER_AIBRIDGE_ALLOW_BYOK": "false", P0 + "TYPE": "openai"}).warnings
    assert any("provider 'openai' has no key" in w for w in warnings)


# --- base URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "normalized"), [
    ("https://api.example.com", "https://api.example.com/"),
    ("https://api.example.com/v1", "https://api.example.com/v1/"),
    ("http://127.0.0.1:4000/openai/v1/", "http://127.0.0.1:4000/openai/v1/"),
])
def test_base_url_normalization(raw, normalized):
    (provider,) = load_settings(env={P0 + "TYPE": "openai", P0 + "BASE_URL": raw}).providers
    assert provider.base_url == normalized


@pytest.mark.parametrize("raw", ["api.example.com", "ftp://api.example.com", "https://", "http://host:port/"])
def test_bad_base_url(raw):
    message = config_error({"CODER_AIBRIDGE_OPENAI_KEY": SECRET, "CODER_AIBRIDGE_OPENAI_BASE_URL": raw})
    assert message == f"CODER_AIBRIDGE_OPENAI_BASE_URL: expected an http(s) URL with a host, got {raw!r}"


@pytest.mark.parametrize(
    "raw", [f"https://user:{SECRET}@proxy.example.com/", f"https://x.openai.azure.com/?api-key={SECRET}"]
)
def test_base_url_with_credentials_is_rejected_without_echo(raw):
    message = config_error({P0 + "TYPE": "openai", P0 + "BASE_URL": raw})
    assert message.startswith(f"{P0}BASE_URL: must be a plain http(s) URL")


# --- secrets -----------------------------------------------------------------------------------


def test_reprs_mask_secrets():
    settings = load_settings(env={
        "CODER_AIBRIDGE_OPENAI_KEY": SECRET,
        "CODER_AIBRIDGE_BEDROCK_REGION": "us-east-1",
        "CODER_AIBRIDGE_BEDROCK_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE",
        "CODER_AIBRIDGE_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET,
    })
    text = repr(settings)
    assert SECRET not in text and AWS_SECRET not in text and "AKIAIOSFODNN7EXAMPLE" not in text
    assert "sk-T...cdef" in text  # a hint, as bridge.masking gives it


def test_secret_with_inner_whitespace_is_rejected_without_echo():
    message = config_error({P0 + "TYPE": "openai", P0 + "KEY": "sk-abc def-TOPSECRET"})
    assert message.startswith(f"{P0}KEY: must be printable ASCII without spaces")
    assert "TOPSECRET" not in message


# --- database ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///aibridge.db", "aibridge.db"),
    ("sqlite:///data/x.db", "data/x.db"),
    ("sqlite:////abs/x.db", "/abs/x.db"),
    ("SQLITE:////abs/x.db", "/abs/x.db"),
    ("/var/lib/bridge/store.db", "/var/lib/bridge/store.db"),
    ("store.db", "store.db"),
    ("postgres://bridge:hunter2@db/bridge", "postgres://bridge:hunter2@db/bridge"),
    ("postgresql://db:5433/bridge", "postgresql://db:5433/bridge"),
])
def test_database_path_from_url(url, path):
    assert database_path_from_url(url) == path


@pytest.mark.parametrize(("url", "problem"), [
    ("postgres://bridge:hunter2@db:port/bridge", "invalid PostgreSQL URL: the port is not a number"),
    ("mysql://db/bridge", "unsupported database scheme 'mysql'"),
    ("sqlite://", "expected sqlite:///relative/path.db"),
    ("sqlite://x.db", "expected sqlite:///relative/path.db"),
    ("", "expected sqlite:///PATH or a file path"),
])
def test_bad_database_urls(url, problem):
    with pytest.raises(ConfigError) as caught:
        database_path_from_url(url)
    assert str(caught.value).startswith(f"CODER_AIBRIDGE_DATABASE_URL: {problem}")
    assert "hunter2" not in str(caught.value)


def test_database_url_setting():
    assert load_settings(env={"CODER_AIBRIDGE_DATABASE_URL": "sqlite:////srv/a.db"}).database_path == "/srv/a.db"
    url = "postgresql://bridge:hunter2@db/bridge"
    assert load_settings(env={"CODER_AIBRIDGE_DATABASE_URL": url}).database_path == url
    message = config_error({"CODER_AIBRIDGE_DATABASE_URL": "postgres://bridge:hunter2@db:x/bridge"})
    assert message.startswith("CODER_AIBRIDGE_DATABASE_URL: invalid PostgreSQL URL")
    assert "hunter2" not in message


def test_resolve_database_path_layers_and_ignores_provider_errors(tmp_path):
    path = write_yaml(tmp_path, "aibridge:\n  database_url: sqlite:///yaml.db\n")
    broken = {P1 + "TYPE": "nonsense"}  # would stop load_settings
    assert resolve_database_path(env=broken) == "aibridge.db"
    assert resolve_database_path(env=broken, config_path=path) == "yaml.db"
    assert resolve_database_path(env={"CODER_AIBRIDGE_DATABASE_URL": "env.db"}, config_path=path) == "env.db"
    assert resolve_database_path(
        env={"CODER_AIBRIDGE_DATABASE_URL": "env.db"}, flags={"CODER_AIBRIDGE_DATABASE_URL": "sqlite:////flag.db"}
    ) == "/flag.db"


# --- import hygiene ----------------------------------------------------------------------------


def test_import_pulls_in_no_network_or_gevent_modules():
    code = "import sys, bridge.config; print([m for m in ('requests', 'flask', 'ssl', 'gevent') if m in sys.modules])"
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
