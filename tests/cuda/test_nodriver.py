"""The stand-in driver: a package that needs libcuda.so.1 imports once virtual CUDA is installed,
and every driver call fails with CUDA_ERROR_NO_DEVICE. Runs in a child process (a loaded
library cannot be unloaded)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from revati.adapters.cuda import nodriver

pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")
pytestmark = pytest.mark.torch

ROOT = Path(__file__).parents[2]


@pytest.mark.skipif(nodriver.driver_present(), reason="a real CUDA driver is installed")
def test_a_package_linking_the_driver_imports_and_cannot_run(tmp_path: Path) -> None:
    assert nodriver._library() is not None, "setup.py did not build _nodriver"
    pkg = tmp_path / "sgl_kernel"  # a name in nodriver.PACKAGES
    pkg.mkdir()
    # What an extension linking the driver needs at dlopen: libcuda.so.1 by its soname.
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import ctypes
        driver = ctypes.CDLL("libcuda.so.1")
        """))
    script = textwrap.dedent(f"""
        import ctypes, sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(ROOT)!r}]
        try:
            ctypes.CDLL("libcuda.so.1")
        except OSError:
            pass
        else:
            raise SystemExit("a driver is loadable before install")
        from tests.cuda.conftest import RecordingLink
        from revati.adapters import cuda
        cuda.install("h100", 1, link=RecordingLink())
        import sgl_kernel
        assert sgl_kernel.driver.cuInit(0) == 100  # CUDA_ERROR_NO_DEVICE
        version = ctypes.c_int(-1)
        assert sgl_kernel.driver.cuDriverGetVersion(ctypes.byref(version)) == 100
        assert version.value == 0
        print("ok")
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
