"""HUBBUB_BACKPLANE_TIMEOUT: read, validated, shown by ``hubbub config``, handed to the broker."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hubbub.backplane import broker_for
from hubbub.config import Config, ConfigError


def test_the_default_is_two_seconds_and_the_variable_sets_it():
    assert Config.from_env({}).backplane_timeout == 2.0
    assert Config.from_env({"HUBBUB_BACKPLANE_TIMEOUT": "0.5"}).backplane_timeout == 0.5


@pytest.mark.parametrize("raw", ["0", "-1", "0.05", "61", "nan", "inf", "soon"])
def test_a_value_out_of_range_names_the_variable(raw):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"HUBBUB_BACKPLANE_TIMEOUT": raw})
    assert caught.value.variable == "HUBBUB_BACKPLANE_TIMEOUT"


def test_the_redis_broker_gets_it():
    config = Config.from_env({"HUBBUB_BACKPLANE": "redis://127.0.0.1:1/0",
                              "HUBBUB_BACKPLANE_TIMEOUT": "0.7"})
    broker = broker_for(config)  # nothing connects before start()
    assert broker.timeout == 0.7
    assert broker.probe_every == pytest.approx(0.7 / 4)


def run_config(value: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    return subprocess.run([sys.executable, "-m", "hubbub.cli", "config"], capture_output=True, text=True,
                          env={**env, "HUBBUB_BACKPLANE_TIMEOUT": value}, timeout=30)


def test_hubbub_config_shows_it_and_refuses_a_bad_one():
    shown = run_config("3.5")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["HUBBUB_BACKPLANE_TIMEOUT"] == 3.5
    refused = run_config("0")
    assert refused.returncode == 2
    assert "HUBBUB_BACKPLANE_TIMEOUT" in refused.stderr
