"""``hubbub config`` / ``serve`` refusals / ``publish`` as a user runs them."""
import json
import os
import subprocess
import sys

import pytest


def run(args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "hubbub.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_config_prints_effective_settings_with_secrets_masked():
    result = run(["config"], {"HUBBUB_API_KEY": "supersecret", "HUBBUB_JWT_SECRET": "jwtsecret",
                              "HUBBUB_BACKPLANE": "redis://user:pw@localhost:6379/0",
                              "HUBBUB_QUEUE_MAX_BYTES": "1MiB", "HUBBUB_PORT": "9000"})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["HUBBUB_API_KEY"] == "***" and config["HUBBUB_JWT_SECRET"] == "***"
    assert "supersecret" not in result.stdout and "pw@" not in result.stdout
    assert config["HUBBUB_BACKPLANE"] == "redis://user:***@localhost:6379/0"
    assert config["HUBBUB_QUEUE_MAX_BYTES"] == 1 << 20
    assert config["HUBBUB_FAST_PORT"] == 9001
    assert config["HUBBUB_HISTORY_SIZE"] == 1000 and config["HUBBUB_SLOW_CONSUMER"] == "drop_oldest"


@pytest.mark.parametrize("variable, value", [
    ("HUBBUB_PORT", "eighty"),
    ("HUBBUB_PORT", "70000"),
    ("HUBBUB_SLOW_CONSUMER", "explode"),
    ("HUBBUB_HEARTBEAT", "0"),
    ("HUBBUB_QUEUE_MAX_BYTES", "lots"),
    ("HUBBUB_DEV", "maybe"),
    ("HUBBUB_BACKPLANE", "kafka://x"),
    ("HUBBUB_JWT_ALGORITHMS", "none"),
])
def test_an_invalid_value_names_the_variable_and_exits_2(variable, value):
    for command in (["config"], ["serve", "--dev"]):
        result = run(command, {variable: value})
        assert result.returncode == 2
        assert variable in result.stderr


def test_serve_refuses_to_start_without_secrets_outside_dev():
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    result = subprocess.run([sys.executable, "-m", "hubbub.cli", "serve"], capture_output=True,
                            text=True, timeout=30, env=env)
    assert result.returncode == 2
    assert "HUBBUB_JWT_SECRET" in result.stderr and "HUBBUB_API_KEY" in result.stderr
    assert "--dev" in result.stderr


def test_serve_refuses_a_redis_cluster_node_as_its_backplane_with_the_reason(cluster_node_redis):
    from .server import free_port_pair

    port = free_port_pair()
    result = run(["serve", "--dev"], {"HUBBUB_BACKPLANE": cluster_node_redis.url, "HUBBUB_PORT": str(port),
                                      "HUBBUB_FAST_PORT": str(port + 1)}, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "is a Redis Cluster node" in output and "Redis Cluster is not supported" in output, output[-2000:]


def test_publish_command_goes_through_the_http_api(hub):
    result = run(["publish", "cli.topic", '{"a": 1}', "--event", "update", "--url", hub.base])
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["ids"]) == 1
    bad = run(["publish", "cli..topic", "1", "--url", hub.base])
    assert bad.returncode == 1 and "400" in bad.stderr
    not_json = run(["publish", "cli.topic", "{nope", "--url", hub.base])
    assert not_json.returncode == 2


def test_publish_follows_hubbub_port(hub):
    result = run(["publish", "cli.port", '{"a": 1}'], {"HUBBUB_PORT": str(hub.port)})
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["ids"]) == 1


def test_import_hubbub_is_enough_for_the_client():
    result = subprocess.run([sys.executable, "-c", "import hubbub; print(hubbub.client.connect.__name__)"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "connect", result.stderr


def test_bench_takes_every_option_of_the_benchmark():
    # bench/RESULTS.md's commands pick scenarios and contenders: `hubbub bench`
    # must hand them to the benchmark rather than refuse them.
    listed = run(["bench", "--help"])
    assert listed.returncode == 0, listed.stderr
    for option in ("--quick", "--scenario", "--only", "--out", "--port-base", "--burst"):
        assert option in listed.stdout
    refused = run(["bench", "--scenario", "no-such-scenario", "--out", os.devnull])
    assert refused.returncode != 0 and "no-such-scenario" in refused.stdout + refused.stderr


def without_hubbub_env() -> dict[str, str]:
    """The environment of a user who set nothing: no HUBBUB_* at all."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}


def test_serve_without_secrets_names_them_and_exits_2():
    result = subprocess.run([sys.executable, "-m", "hubbub.cli", "serve"], capture_output=True,
                            text=True, timeout=30, env=without_hubbub_env())
    assert result.returncode == 2
    assert "HUBBUB_JWT_SECRET" in result.stderr and "HUBBUB_API_KEY" in result.stderr
    assert "HUBBUB_DEV=1" in result.stderr


def test_an_embedded_app_refuses_to_start_without_secrets(tmp_path):
    # `uvicorn examples.fastapi_app:app` as the README shows it, with nothing set:
    # it must not start and then answer every subscriber 401 in silence.
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", "import examples.fastapi_app"], capture_output=True,
                            text=True, timeout=60, env=without_hubbub_env(), cwd=root)
    assert result.returncode != 0
    assert "ConfigError" in result.stderr and "HUBBUB_JWT_SECRET" in result.stderr \
        and "HUBBUB_API_KEY" in result.stderr


@pytest.mark.parametrize("setting, module, extra", [
    ({"HUBBUB_BACKPLANE": "redis://127.0.0.1:6379/0"}, "redis", "redis"),
    ({"HUBBUB_STORE": "postgresql://127.0.0.1/test"}, "psycopg_pool", "postgres"),
])
def test_a_backend_whose_package_is_missing_stops_serve_with_the_pip_line(tmp_path, setting, module, extra):
    # The module cannot be imported, as on a machine where the extra was never
    # installed: a directory first on the path holds a stand-in that fails to import.
    (tmp_path / f"{module}.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n")
    env = {**without_hubbub_env(), **setting, "PYTHONPATH": str(tmp_path), "HUBBUB_DEV": "1"}
    result = subprocess.run([sys.executable, "-m", "hubbub.cli", "serve"], capture_output=True, text=True,
                            timeout=30, env=env)
    assert result.returncode == 2, result.stderr
    assert f"pip install 'hubbub[{extra}]'" in result.stderr and repr(module) in result.stderr
    assert "serving on" not in result.stderr


# -- the server API's subcommands (SPEC 10) ----------------------------------------------
def test_server_api_subcommands_go_through_the_http_api(make_hub):
    from .helpers_user import SECURED_ENV
    from .tokens import API_KEY

    hub = make_hub(env=SECURED_ENV, dev=False)
    env = {"HUBBUB_PORT": str(hub.port), "HUBBUB_API_KEY": API_KEY}
    published = run(["publish", "public.cli.h", '{"n": 1}'], env)
    assert published.returncode == 0, published.stderr
    first = json.loads(published.stdout)["ids"][0]
    run(["publish", "public.cli.h", '{"n": 2}'], env)

    history = run(["history", "public.cli.h"], env)
    assert history.returncode == 0, history.stderr
    assert [m["data"]["n"] for m in json.loads(history.stdout)["messages"]] == [1, 2]
    page = json.loads(run(["history", "public.cli.h", "--since", first, "--limit", "1"], env).stdout)
    assert [m["data"]["n"] for m in page["messages"]] == [2]

    assert json.loads(run(["topics", "--prefix", "public.cli."], env).stdout) == {"topics": []}
    disconnect = run(["disconnect", "someone", "--code", "4001", "--reason", "bye"], env)
    assert disconnect.returncode == 0 and json.loads(disconnect.stdout) == {"closed": 0}
    unsubscribe = run(["unsubscribe", "someone", "public.cli.h"], env)
    assert unsubscribe.returncode == 0 and json.loads(unsubscribe.stdout) == {"unsubscribed": 0}

    bad = run(["disconnect", "someone", "--code", "1000"], env)
    assert bad.returncode == 1 and "400" in bad.stderr and "'code'" in bad.stderr
    no_key = run(["topics"], {"HUBBUB_PORT": str(hub.port), "HUBBUB_API_KEY": ""})
    assert no_key.returncode == 1 and "401" in no_key.stderr
