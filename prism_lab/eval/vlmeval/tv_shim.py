"""Conditional torchvision compatibility shim, and a side-effect-free ``import vlmeval``.

PyPI has no CPU build of torchvision. ``torchvision==0.28.0`` (the version that matches ``torch==2.13.0``)
ships a C++ library linked against the CUDA build of torch, so beside the CPU wheel it fails to load and
``import torchvision`` dies with ``RuntimeError: operator torchvision::nms does not exist``
(``torchvision/_meta_registrations.py`` registers fake kernels for two operators whose schemas the C++
library would have defined). ``import vlmeval`` imports torchvision unconditionally, and so do
transformers' Qwen3-VL modules once torchvision is installed.

:func:`apply` fixes this by defining the two schemas (``torchvision::nms`` and ``torchvision::qnms``)
**only when torchvision's own C++ library cannot be loaded**. Defining them unconditionally kills the
process (abort, exit 134) wherever the C++ ops do load (GPU installs, torch/torchvision CUDA pairs), and
Python cannot catch that. With the shim, torchvision's Python parts (transforms, io helpers) work;
its C++ ops (nms, roi_align, image decoding) stay unusable, and nothing on the evaluation path uses them.

It must run before torchvision is first imported (afterwards it does nothing: a failed torchvision
import leaves a half-initialised module behind, so re-importing is the caller's problem).

:func:`import_vlmeval` applies the shim, imports ``vlmeval`` and undoes its process-wide side effects:
``torch.set_grad_enabled(False)`` (training after it would silently get no gradients) and
``ssl._create_default_https_context = ssl._create_unverified_context``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["PTH_NAME", "apply", "import_vlmeval", "install_hook", "shim_state", "torchvision_c_loads", "write_pth"]

#: The ``.pth`` file :func:`write_pth` puts into site-packages (applies the shim in every process).
PTH_NAME = "prism_lab_tv_shim.pth"

_STATE: dict[str, Any] = {"checked": False, "applied": False, "reason": None}
_LIB: Any = None  # keep the torch.library.Library alive: dropping it would unregister the schemas


def _torchvision_c_path() -> Path | None:
    """The path of torchvision's ``_C`` extension, without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            p = Path(loc) / f"_C{suffix}"
            if p.is_file():
                return p
    return None


def torchvision_c_loads() -> tuple[bool, str | None]:
    """(True, None) when torchvision's C++ library loads beside the installed torch (or torchvision is
    absent / has no C++ library), else (False, why). Loads the library with ``torch.ops.load_library``:
    on success the real operator schemas are registered, exactly as ``import torchvision`` would."""
    import torch

    path = _torchvision_c_path()
    if path is None:
        return True, None
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as e:
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return True, None


def _schema_exists(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def apply() -> bool:
    """Define ``torchvision::nms``/``qnms`` when (and only when) torchvision's C++ library fails to load.

    Idempotent and cheap after the first call. Returns True when the shim is (now) in place.
    Set ``PRISM_TV_SHIM=0`` to disable it (e.g. to reproduce the original failure).
    """
    global _LIB
    if _STATE["checked"]:
        return bool(_STATE["applied"])
    _STATE["checked"] = True
    if os.environ.get("PRISM_TV_SHIM", "1") == "0":
        _STATE["reason"] = "disabled by PRISM_TV_SHIM=0"
        return False
    if "torchvision" in sys.modules:
        _STATE["reason"] = "torchvision was already imported"
        return False
    ok, why = torchvision_c_loads()
    if ok:
        _STATE["reason"] = "torchvision's C++ library loads; no shim needed"
        return False
    if _schema_exists("nms") and _schema_exists("qnms"):
        _STATE["reason"] = "schemas already defined"
        return False
    import torch

    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _STATE["applied"] = True
    _STATE["reason"] = f"torchvision's C++ library did not load ({why})"
    return True


def shim_state() -> dict[str, Any]:
    """``{"checked", "applied", "reason"}``: whether :func:`apply` ran, defined the schemas, and why."""
    return dict(_STATE)


class _TorchvisionHook:
    """A ``sys.meta_path`` entry that runs :func:`apply` just before torchvision is first imported, then
    removes itself (it never finds a module; the regular finders import torchvision)."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            apply()
        return None


def install_hook() -> None:
    """Apply the shim lazily: on the first ``import torchvision`` of this process (costs nothing until
    then). Used by the ``.pth`` file of :func:`write_pth`; idempotent."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionHook())


def write_pth(site_dir: str | Path | None = None) -> Path:
    """Write ``prism_lab_tv_shim.pth`` into ``site_dir`` (default: this interpreter's purelib), so every
    Python process of the environment (``python -m vlmeval``, transformers' Qwen3-VL imports, pytest)
    gets the conditional shim. ``python -m prism_lab.eval.vlmeval.tv_shim --install-pth`` does this."""
    import sysconfig

    d = Path(site_dir) if site_dir is not None else Path(sysconfig.get_paths()["purelib"])
    p = d / PTH_NAME
    p.write_text(
        "import importlib.util as _u; _s = _u.find_spec('prism_lab') and __import__('prism_lab.eval.vlmeval.tv_shim', "
        "fromlist=['install_hook']); _s and _s.install_hook()\n",
        encoding="utf-8",
    )
    return p


def import_vlmeval() -> ModuleType:
    """``import vlmeval`` after :func:`apply`, keeping the caller's grad mode and default SSL context.

    Raises ImportError (with the install hint) when the ``vlmeval`` extra is not installed.
    """
    if "vlmeval" in sys.modules:
        return sys.modules["vlmeval"]
    import ssl

    import torch

    apply()
    grad = torch.is_grad_enabled()
    https_ctx = ssl._create_default_https_context
    try:
        import vlmeval  # noqa: F401  (sets torch.set_grad_enabled(False) process-wide)
    except ImportError as e:
        raise ImportError(
            f"VLMEvalKit is not installed ({e}); install the extra with the torch pins as constraints: "
            "pip install -c constraints/vlmeval.txt -e '.[vlmeval]' (see docs/vlmevalkit.md)"
        ) from e
    finally:
        torch.set_grad_enabled(grad)
        ssl._create_default_https_context = https_ctx
    return sys.modules["vlmeval"]


if __name__ == "__main__":  # pragma: no cover - command line
    if sys.argv[1:] == ["--install-pth"]:
        print(write_pth())
    elif sys.argv[1:] == ["--check"]:
        apply()
        print(shim_state())
    else:
        print("usage: python -m prism_lab.eval.vlmeval.tv_shim --install-pth | --check", file=sys.stderr)
        sys.exit(2)
