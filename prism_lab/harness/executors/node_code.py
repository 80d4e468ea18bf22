"""Before the first run on a Ray cluster, every node must run the same prism-lab code as the driver.

A stage process runs the prism-lab installed on its node, and the driver judges runs by its own code
(``sweep status`` flags runs made by other code as stale, harness/freshness.py): a node with an older
checkout would make runs the driver takes for the current code's, or flags at once. So the driver asks
every alive node for its installed code (every prism_lab source file's digest and the numeric packages'
versions, ``freshness.installed_code``) with one zero-CPU task pinned to each node, and refuses with one
line naming the node and what differs.
"""

from __future__ import annotations

from typing import Any

from prism_lab.errors import PrismError

#: Seconds the driver waits for every node's answer (a worker process may have to start on each).
GATHER_TIMEOUT = 120.0


def node_fingerprint() -> dict[str, Any]:
    """The installed code this process imports (the driver's; on a node, the stage processes')."""
    from prism_lab.harness.freshness import installed_code

    return installed_code()


def stage_process_fingerprint() -> dict[str, Any]:
    """What a stage process started here would import: ``node_fingerprint()`` of a fresh interpreter, started as
    the Ray actor starts its stage (this node's interpreter and environment). The Ray task itself cannot tell:
    Ray puts the driver's ``sys.path`` in front of its workers' own, so it may import the driver's copy."""
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "prism_lab.harness.executors.node_code"], capture_output=True,
                         text=True, timeout=GATHER_TIMEOUT, env=dict(os.environ), stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"python -m prism_lab.harness.executors.node_code: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout)


def _listed(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def code_difference(driver: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> str | None:
    """One line saying how the first node (by name) that differs from the driver differs, or None when
    every node runs the driver's code. ``driver`` and each of ``nodes`` (node name -> fingerprint) are
    ``node_fingerprint()``'s."""
    for node, print_ in sorted(nodes.items()):
        mine, theirs = driver.get("sources", {}), print_.get("sources", {})
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if changed:
            return (f"Ray node {node} runs other prism-lab code than this driver ({len(changed)} source file(s) differ: "
                    f"prism_lab/{_listed(changed)}); install the same prism-lab on every node and the driver")
        mine, theirs = driver.get("packages", {}), print_.get("packages", {})
        moved = [f"{n} {mine.get(n)} here, {theirs.get(n)} there" for n in sorted(mine.keys() | theirs.keys())
                 if mine.get(n) != theirs.get(n)]
        if moved:
            return (f"Ray node {node} has other package versions than this driver ({_listed(moved)}); install the "
                    "same versions on every node and the driver")
    return None


def _name(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')})"


def gather(ray: Any, timeout: float = GATHER_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Every alive node's code as its stage processes see it, by node name: one zero-CPU task pinned to each node
    (it runs even while the cluster's CPUs are taken)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(stage_process_fingerprint)
    refs = {_name(n): task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in ray.nodes() if n.get("Alive")}
    _, late = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    if late:
        names = [name for name, ref in refs.items() if ref in late]
        raise PrismError(f"Ray node(s) {_listed(names)} did not report their prism-lab code within {timeout:g} s")
    out = {}
    for name, ref in refs.items():
        try:
            out[name] = ray.get(ref)
        except ray.exceptions.RayError as exc:  # e.g. prism-lab is not installed there
            raise PrismError(f"Ray node {name} cannot report its prism-lab code: "
                             f"{' '.join(str(exc).split())[:300]}") from None
    return out


def check_nodes(ray: Any) -> None:
    """PrismError (one line) unless every alive node of the cluster runs this driver's prism-lab code."""
    problem = code_difference(node_fingerprint(), gather(ray))
    if problem:
        raise PrismError(problem)


if __name__ == "__main__":
    import json

    print(json.dumps(node_fingerprint()))
