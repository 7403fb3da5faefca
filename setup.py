"""Packaging glue that pyproject.toml cannot express: the folder-to-namespace mapping and the
C clock extension.

The source folders keep their short names (revatid/, adapters/, predictors/); they install
under the `revati` namespace so that no import name collides with another distribution
(`adapters` is AdapterHub's name on PyPI).
"""

from pathlib import Path

from setuptools import Extension, setup

ROOTS = {folder: f"revati.{folder}" for folder in ("revatid", "adapters", "predictors")}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for folder, name in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            pkg = ".".join((name, *rel))
            packages.append(pkg)
            package_dir[pkg] = str(init.parent)
    return packages, package_dir


packages, package_dir = _packages()

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=[
        Extension(
            "revati.adapters.clock._vclock",
            sources=["adapters/clock/_vclock.c"],
            extra_compile_args=["-O2", "-std=c11"],
        ),
        # Not a Python module: a stand-in libcuda.so.1 that revati.adapters.cuda.nodriver loads
        # with ctypes so that CUDA extensions linking the driver can be imported.
        Extension(
            "revati.adapters.cuda._nodriver",
            sources=["adapters/cuda/_nodriver.c"],
            extra_compile_args=["-O2", "-std=c11"],
            extra_link_args=["-Wl,-soname,libcuda.so.1"],
        ),
    ],
)
