"""Check a Ray ``--address`` before anything is written: one line naming the option for every way it fails.

``ray.init(address=HOST:PORT)`` retries for about 20 s and then raises a traceback when nothing listens,
when something that is not Ray listens, or when the cluster uses token authentication (on by default
since Ray 2.5x for a cluster started where a token file exists, e.g. after any private ``ray.init()``) and
the driver does not send the token. Ray sends the token only when ``RAY_AUTH_MODE=token`` is set for the
driver; with an explicit address it never turns that on by itself (ray/_private/worker.py, ``init``), see
https://docs.ray.io/en/latest/ray-security/token-auth.html.

The check asks the head node's GCS one cheap gRPC call (``NodeInfoGcsService/GetClusterId``) with the
token Ray itself would send (``AuthenticationTokenLoader``), and tells the answers apart:
nothing listens, not a Ray head node, token needed, token wrong. ``ray://`` (Ray Client) URLs are refused:
the driver reads every run's events from the shared root, so it runs on a machine of the cluster and
connects to the GCS directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prism_lab.errors import PrismError

#: A GCS method every Ray head node answers; its request message is empty.
_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"

_TOKEN_HINT = ("set RAY_AUTH_MODE=token for prism-lab and give it the cluster's token (the file ~/.ray/auth_token, "
               "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN), as Ray documents for token authentication")


def address_from(address: str | None, environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """(the address to connect to, the name to blame): ``--address``, else ``RAY_ADDRESS``, else None."""
    if address:
        return address, "--address"
    env = (os.environ if environ is None else environ).get("RAY_ADDRESS") or None
    return env, "RAY_ADDRESS"


def _split(address: str, option: str) -> tuple[str, int]:
    if address.startswith("ray://"):
        raise PrismError(f"{option} {address}: Ray Client (ray://) URLs are not supported; give the head node's "
                         "HOST:PORT (the --port of `ray start --head`, 6379 by default) and run prism-lab on a "
                         "machine of the cluster that mounts the shared root")
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if "://" in address or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PrismError(f"{option} {address!r}: expected HOST:PORT of a Ray head node (e.g. 10.0.0.1:6379) "
                         "or 'auto'")
    return host, int(port)


def _auth_metadata() -> list[tuple[str, str]]:
    """The authorization header Ray's own clients send (empty unless RAY_AUTH_MODE=token and a token exists)."""
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:
        return []
    return list(AuthenticationTokenLoader.instance().get_token_for_http_header().items())


def check_address(address: str | None, timeout: float = 5.0, option: str = "--address") -> None:
    """Raise a one-line PrismError naming ``option`` unless a Ray head node answers at ``address`` and
    accepts this process's credentials. None, 'auto' and 'local' are left to Ray (no fixed address)."""
    if not address or address in ("auto", "local"):
        return
    host, port = _split(address, option)
    try:
        import grpc
    except ImportError:
        raise PrismError(f"{option}: the Ray executor needs the `ray` extra: pip install -e \".[ray]\"") from None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target)
    try:
        probe = channel.unary_unary(_PROBE_METHOD, request_serializer=None, response_deserializer=None)
        probe(b"", timeout=timeout, metadata=_auth_metadata())
    except grpc.RpcError as exc:
        raise PrismError(_explain(exc.code(), exc.details() or "", address, option)) from None
    finally:
        channel.close()


def _explain(code: object, details: str, address: str, option: str) -> str:
    import grpc

    if code == grpc.StatusCode.UNAUTHENTICATED:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return (f"{option} {address}: the Ray cluster there refused this machine's authentication token "
                    "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token is not the cluster's token)")
        return f"{option} {address}: the Ray cluster there requires token authentication; {_TOKEN_HINT}"
    if code == grpc.StatusCode.UNAVAILABLE and ("refused" in details.lower() or "no route" in details.lower()
                                                or "resolve" in details.lower() or "dns" in details.lower()):
        return (f"{option} {address}: no Ray head node answers there ({_reason(details)}); "
                "start one with `ray start --head --port PORT`")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{option} {address}: no answer from a Ray head node there within the time limit"
    return (f"{option} {address}: something answers there but it is not a Ray head node ({_reason(details)}); "
            "give the GCS address `ray start --head` prints (its --port, 6379 by default)")


def _reason(details: str) -> str:
    """The last clause of gRPC's error text, e.g. 'Connection refused'."""
    return " ".join(details.rsplit(": ", 1)[-1].split())[:160] or "no details"
