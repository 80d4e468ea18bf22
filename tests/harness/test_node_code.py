"""The Ray driver's check that every node runs its prism-lab code (harness/executors/node_code.py): the
comparison as a pure function, and the fingerprint of the code installed here."""

from __future__ import annotations

from prism_lab.harness.executors.node_code import code_difference, node_fingerprint


def _print(**sources: str) -> dict:
    return {"sources": {f"{k}.py": v for k, v in sources.items()}, "packages": {"torch": "2.13.0"}}


def test_same_code_everywhere_passes_and_the_first_differing_node_is_named_with_its_files():
    driver = _print(a="1", b="2", c="3", d="4", e="5")
    assert code_difference(driver, {"n1": driver, "n2": _print(a="1", b="2", c="3", d="4", e="5")}) is None
    assert code_difference(driver, {}) is None
    older = _print(a="0", b="2", c="3", d="4")  # a.py changed, e.py missing
    line = code_difference(driver, {"n1": driver, "n2 (10.0.0.2)": older})
    assert line == ("Ray node n2 (10.0.0.2) runs other prism-lab code than this driver (2 source file(s) differ: "
                    "prism_lab/a.py, e.py); install the same prism-lab on every node and the driver")
    many = _print(a="9", b="9", c="9", d="9", e="9")
    assert "(5 source file(s) differ: prism_lab/a.py, b.py, c.py and 2 more)" in code_difference(driver, {"n": many})


def test_other_package_versions_on_a_node_are_refused():
    driver = _print(a="1")
    node = {**driver, "packages": {"torch": "2.12.1"}}
    assert code_difference(driver, {"gpu-7": node}) == (
        "Ray node gpu-7 has other package versions than this driver (torch 2.13.0 here, 2.12.1 there); install "
        "the same versions on every node and the driver")


def test_the_fingerprint_covers_every_source_file_of_the_package():
    fp = node_fingerprint()
    assert {"harness/executors/node_code.py", "trainers/rl.py", "__init__.py"} <= set(fp["sources"])
    assert "torch" in fp["packages"]
