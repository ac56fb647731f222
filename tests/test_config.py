"""Configuration from the environment: defaults are the seed's, bad values are named."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pushapp.config import Config, ConfigError


def test_defaults_keep_the_seeds_names_and_timings():
    config = Config.from_env({"AUTH_MODE": "insecure"})
    assert (config.channel_snschat, config.channel_notification, config.channel_login,
            config.channel_chat_filter, config.channel_chat_history, config.channel_chat_push,
            config.channel_geo) == ("snschat", "notification", "login_message_channel",
                                    "chat_filter_channel", "chat_message_history_channel",
                                    "chat_message_channel", "geo")
    assert config.push_delay == 120.0
    assert config.chat_filter == "external"
    assert config.worker_connections > 1000


def test_every_field_is_read_from_its_variable():
    names = [field.metadata["env"] for field in dataclasses.fields(Config)]
    assert len(names) == len(set(names))
    config = Config.from_env({"JWT_SECRET": "s" * 32, "PUSH_DELAY": "2.5", "STORE_MAX_ENTRIES": "7",
                              "CHAT_FILTER": "direct",
                              "CORS_ALLOWED_ORIGINS": "https://a, https://b",
                              "KEY_PREFIX": "t:"})
    assert (config.push_delay, config.store_max_entries, config.chat_filter) == (2.5, 7, "direct")
    assert config.cors_allowed_origins == ["https://a", "https://b"]
    assert config.key("chat", "u1") == "t:chat:u1"


@pytest.mark.parametrize("name,value,says", [
    ("PUSH_DELAY", "soon", "PUSH_DELAY='soon'"),
    ("PUSH_DELAY", "0", "must be greater than 0"),
    ("STORE_MAX_ENTRIES", "-3", "must be greater than 0"),
    ("CHAT_FILTER", "maybe", "expected one of external, direct"),
    ("LOG_LEVEL", "loud", "expected one of"),
    ("KEY_PREFIX", "app{1}:", r"KEY_PREFIX='app\{1\}:': must not contain \{ or \}"),
    ("REDIS_URL", "redis+cluster://a:7000/0", "Redis Cluster has no databases"),
])
def test_bad_values_are_refused_with_the_variable_named(name, value, says):
    with pytest.raises(ConfigError, match=says):
        Config.from_env({"AUTH_MODE": "insecure", name: value})


def test_secure_mode_is_the_default_and_needs_a_key():
    with pytest.raises(ConfigError, match="set JWT_SECRET .* or set AUTH_MODE=insecure"):
        Config.from_env({})
    assert Config.from_env({"JWT_SECRET": "s" * 32}).auth_mode == "jwt"


@pytest.mark.parametrize("secret,size", [
    ("s" * 31, 31),
    ("\u00e9" * 15 + "x", 31),  # 16 characters, 31 bytes: the length that counts is in bytes
    ("short", 5),
])
def test_a_jwt_secret_under_32_bytes_is_refused(secret, size):
    with pytest.raises(ConfigError, match=f"JWT_SECRET is {size} bytes: an HS256 secret needs 32"):
        Config.from_env({"JWT_SECRET": secret})


@pytest.mark.parametrize("secret", ["s" * 32, "\u00e9" * 16])
def test_a_jwt_secret_of_32_bytes_is_taken(secret):
    assert Config.from_env({"JWT_SECRET": secret}).jwt_secret == secret


def test_every_problem_is_named_at_once():
    with pytest.raises(ConfigError) as unparsed:
        Config.from_env({"AUTH_MODE": "insecure", "PUSH_DELAY": "soon", "LOG_LEVEL": "loud"})
    assert [line.split(":")[0] for line in unparsed.value.problems] == [
        "PUSH_DELAY='soon'", "LOG_LEVEL='loud'"]
    with pytest.raises(ConfigError) as conflicting:
        Config.from_env({"JWT_SECRET": "short", "MAX_EVENT_BYTES": "2048",
                         "MAX_FRAME_BYTES": "1024", "JWT_JWKS_URL": "file:///etc/passwd"})
    assert [line.split()[0] for line in conflicting.value.problems] == [
        "JWT_SECRET", "JWT_JWKS_URL='file:///etc/passwd':", "MAX_FRAME_BYTES"]


def test_readme_documents_every_variable():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [field.metadata["env"] for field in dataclasses.fields(Config)
               if f"| `{field.metadata['env']}` |" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"


@pytest.mark.parametrize("name,value,says", [
    ("STORE_WAIT_REPLICAS", "-1", "STORE_WAIT_REPLICAS='-1': expected a number of replicas"),
    ("STORE_WAIT_REPLICAS", "one", "STORE_WAIT_REPLICAS='one': expected a number of replicas"),
    ("STORE_WAIT_TIMEOUT_MS", "0", "STORE_WAIT_TIMEOUT_MS='0': expected a whole number of "
                                   "milliseconds, 1 or more"),
    ("STORE_WAIT_TIMEOUT_MS", "0.5", "STORE_WAIT_TIMEOUT_MS='0.5': expected a whole number"),
])
def test_bad_wait_settings_are_refused_in_one_line_each(name, value, says):
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": "redis://r:6379/0", name: value})
    [line] = refused.value.problems
    assert line.startswith(says) and "\n" not in line


@pytest.mark.parametrize("url,says", [
    ("", "STORE_WAIT_REPLICAS=1 needs a Redis with replicas (REDIS_URL): the embedded Redis"),
    ("redis+cluster://a:7000,b:7001",
     "STORE_WAIT_REPLICAS=1 is not supported on Redis Cluster: redis-py's cluster pipeline"),
])
def test_waiting_for_replicas_is_refused_where_it_cannot_work(url, says):
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": url, "STORE_WAIT_REPLICAS": "1"})
    [line] = refused.value.problems
    assert line.startswith(says)


@pytest.mark.parametrize("url", ["redis://r:6379/0", "unix:///run/redis.sock",
                                 "redis+sentinel://s1:26379,s2:26379/main"])
def test_waiting_for_replicas_is_taken_on_one_server_and_sentinel(url):
    config = Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": url,
                              "STORE_WAIT_REPLICAS": "2", "STORE_WAIT_TIMEOUT_MS": "250"})
    assert (config.store_wait_replicas, config.store_wait_timeout_ms) == (2, 250)
    assert Config.from_env({"AUTH_MODE": "insecure"}).store_wait_replicas == 0
