"""The environment as a user meets it (issue 29, item 1): hub kernels stay off unless the user turns them on,
and `prism-lab doctor` says where the installed versions differ from the lock."""

from __future__ import annotations

import importlib.metadata
import importlib.util
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


def test_doctor_names_each_package_that_differs_from_the_lock_and_shows_the_hub_kernels_switch(tmp_path):
    transformers = importlib.metadata.version("transformers")
    lock = tmp_path / "lock.txt"
    lock.write_text("# a lock that says otherwise\ntransformers==4.0.0\npyyaml==" +
                    importlib.metadata.version("pyyaml") + "\nsome-extra-not-installed==1.0\n")
    env = cli_env(PRISM_LAB_LOCK=str(lock))
    env.pop("USE_HUB_KERNELS", None)  # this test process imported prism_lab, which set it
    res = subprocess.run([sys.executable, "-m", "prism_lab.cli", "doctor"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    shown = res.stdout + res.stderr
    assert res.returncode == 0, shown[-3000:]
    assert f"transformers: installed {transformers}, locked 4.0.0" in shown, shown[-3000:]
    assert "pyyaml:" not in shown and "some-extra-not-installed" not in shown, shown[-3000:]
    # transformers, and `kernels` where it is installed (the newest versions: scripts/newest.sh) and unlocked
    differ = 1 + (importlib.util.find_spec("kernels") is not None)
    warnings = [line for line in shown.splitlines() if line.startswith(f"warning: {differ} package(s) differ")]
    assert len(warnings) == 1 and str(lock) in warnings[0], shown[-3000:]
    assert "USE_HUB_KERNELS=0" in shown, shown[-3000:]
