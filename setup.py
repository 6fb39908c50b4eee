"""Builds the compiled core from ext/ unless HUBBUB_NO_EXTENSIONS=1.

Metadata lives in pyproject.toml; this file only declares the extensions.
"""
import os

from setuptools import Extension, setup

MODULES = ["_trie", "_ring", "_fanout"]


def extensions():
    if os.environ.get("HUBBUB_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    return cythonize(
        [Extension(f"hubbub.{name}", [f"ext/hubbub/{name}.pyx"]) for name in MODULES],
        include_path=["ext"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions())
