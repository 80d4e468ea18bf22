"""The environment as a user meets it (issue 29, item 1): hub kernels stay off unless the user turns them on,
and `prism-lab doctor` says where the installed versions differ from the lock."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, cli_env

#: Prints the environment value and the switch as transformers read it: 5.25 reads it at every load
#: (``_kernels_enabled()``); 5.24 once at import (``_TRANSFORMERS_USE_HUB_KERNELS``; its ``_kernels_enabled``
#: constant is also False whenever the `kernels` package is absent, so it would not show the switch).
PROBE = """
import prism_lab, transformers, os
from transformers.integrations import hub_kernels
flag = hub_kernels._kernels_enabled
on = flag() if callable(flag) else hub_kernels._TRANSFORMERS_USE_HUB_KERNELS in {"1", "ON", "YES", "TRUE"}
print(os.environ.get("USE_HUB_KERNELS"), on)
"""


def probe_hub_kernels(**env: str) -> str:
    full = cli_env(**env)
    if "USE_HUB_KERNELS" not in env:
        full.pop("USE_HUB_KERNELS", None)
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, cwd=REPO,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


def test_importing_prism_lab_turns_hub_kernels_off_before_transformers_reads_the_switch():
    assert probe_hub_kernels() == "0 False"


def test_a_user_who_turns_hub_kernels_on_keeps_them_on():
    assert probe_hub_kernels(USE_HUB_KERNELS="1") == "1 True"
