"""Build hook: compile the optional column opener ``dualwrite.crypto._gcm`` (C, OpenSSL).

dualwrite runs without it (``dualwrite.crypto.columns`` falls back to Python, same answers);
with it a bulk read's decryption costs about a third. The hook never fails a build: without a
C compiler, Python headers or OpenSSL's headers it warns and builds the pure-Python package.
``DUALWRITE_NO_NATIVE=1`` at build time skips it (and at run time ignores a built one).

An editable install (``uv sync``) compiles it in place, beside its source under ``src/``
(ignored by git); a wheel carries it as a platform wheel.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/dualwrite/crypto/_gcm.c")


def compile_extension(source: Path, target: Path) -> None:
    """``cc -O2 -shared`` the module against this interpreter's headers and ``-lcrypto``."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    cmd = [*cc, "-O2", "-fPIC", "-shared", "-Wall", f"-I{include}", str(source), "-lcrypto",
           "-o", str(target)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class NativeOpenerHook(BuildHookInterface):  # type: ignore[type-arg]
    _scratch: Path | None = None  # a wheel's build folder for the module, removed after

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("DUALWRITE_NO_NATIVE"):
            return
        root = Path(self.root)
        name = "_gcm" + str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")
        if version == "editable":
            target = root / SOURCE.parent / name
        else:
            self._scratch = Path(tempfile.mkdtemp(prefix="dualwrite-build-"))
            target = self._scratch / name
        try:
            compile_extension(root / SOURCE, target)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            self.app.display_warning(
                f"dualwrite: the native column opener was not built ({detail.strip()[:300]}); "
                "bulk reads use the pure-Python path"
            )
            return
        if version != "editable":
            build_data["force_include"][str(target)] = f"dualwrite/crypto/{name}"
            build_data["pure_python"] = False
            build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._scratch is not None:  # the wheel holds its copy now
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
