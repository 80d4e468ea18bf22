"""`--executor ray --address` (issue 29, item 8): every address that cannot be used is one line naming
`--address`, exit 2, nothing written; the README's recipe (token authentication, Ray 2.60) works for real
against `ray start --head` on 127.0.0.1."""

from __future__ import annotations

import secrets
import socket
import threading
from pathlib import Path

import pytest
import yaml

from tests.hostile.conftest import assert_user_error, cli, snapshot

pytest.importorskip("ray")

PLUGIN = {"PRISM_LAB_PLUGINS": "tests.plugins.chain"}
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def chain_grid(tmp: Path) -> Path:
    """Three test-only stages (tests/plugins/chain.py): the cheapest real grid."""
    tmp.mkdir(parents=True, exist_ok=True)
    counter = str(tmp / "executions.log")
    path = tmp / "chain.yaml"
    path.write_text(yaml.safe_dump({"name": "chain", "pipeline": "test-chain", "axes": {"x": [1]},
                                    "stages": {"first": {"counter": counter}, "middle": {"counter": counter},
                                               "last": {"counter": counter}}}))
    return path


def ray_run(tmp: Path, address: str, **env: str):
    return cli("sweep", "run", chain_grid(tmp), "--root", tmp / "root", "--executor", "ray", "--address", address,
               "-q", cwd=tmp, timeout=90, **PLUGIN, **LOOPBACK, **env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def not_ray():
    """A TCP server on 127.0.0.1 that answers every connection with a line of text (not Ray, not gRPC)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_an_address_that_answers_but_is_not_ray_or_answers_nothing(tmp_path, not_ray):
    res = ray_run(tmp_path, not_ray)
    assert_user_error(res, "--address", not_ray, "not a Ray head node")
    assert snapshot(tmp_path / "root") is None
    silent = f"127.0.0.1:{free_port()}"
    res = ray_run(tmp_path, silent)
    assert_user_error(res, "--address", silent, "no Ray head node answers")
    assert snapshot(tmp_path / "root") is None


def test_a_ray_client_url_is_refused_with_the_address_to_give_instead(tmp_path):
    url = f"ray://127.0.0.1:{free_port()}"
    res = ray_run(tmp_path, url)
    assert_user_error(res, "--address", url, "Ray Client", "HOST:PORT")
    assert snapshot(tmp_path / "root") is None


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """`ray start --head` with token authentication on, as the README's recipe sets it up."""
    from tests.conftest import cli_env
    from tests.ray_cluster import LocalRayCluster

    token = tmp_path_factory.mktemp("ray-token") / "auth_token"
    token.write_text(secrets.token_hex(32))
    cluster = LocalRayCluster(cli_env(), num_cpus=1, token_path=token)
    try:
        cluster.wait_ready()
        yield cluster, token
    finally:
        cluster.stop()


def test_the_readme_recipe_with_token_authentication(tmp_path, token_cluster):
    cluster, token = token_cluster
    # a driver without RAY_AUTH_MODE=token (what failed with Ray's AuthenticationError traceback)
    res = ray_run(tmp_path / "no-token", cluster.address, RAY_AUTH_MODE="", RAY_AUTH_TOKEN_PATH=str(token))
    assert_user_error(res, "--address", cluster.address, "RAY_AUTH_MODE=token")
    assert snapshot(tmp_path / "no-token" / "root") is None
    # a driver with another token
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    res = ray_run(tmp_path / "wrong", cluster.address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong))
    assert_user_error(res, "--address", cluster.address, "token")
    assert snapshot(tmp_path / "wrong" / "root") is None
    # the recipe: RAY_AUTH_MODE=token and the cluster's token on the driver
    res = ray_run(tmp_path, cluster.address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 run(s) finished" in res.stderr
    assert sorted((tmp_path / "executions.log").read_text().split()) == ["first:None", "last:1", "middle:1"]
