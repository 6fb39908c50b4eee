"""Builds the compiled core from ext/ unless HUBBUB_NO_EXTENSIONS=1.

Metadata lives in pyproject.toml; this file only declares the extensions.

- Release flags: -O3 and no debug info (-g0, stripped at link), so a wheel
  carries ~0.3 MB of .so rather than ~1.7 MB; HUBBUB_DEBUG_BUILD=1 keeps the
  symbols for a profiler or gdb.
- No C compiler (or a failing compile): the install goes on without the
  extensions and warns once; hubbub then runs its pure-Python core (same
  behaviour, slower), and ``hubbub.NATIVE`` is False.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ["_trie", "_ring", "_fanout", "_writer"]
# Compiled against the installed picows' picows.pxd (a build requirement), for
# idle memory only: a build that cannot make it leaves it out alone, and the
# fast port then keeps picows' own write buffer (ext/hubbub/_picows_buffer.pyx).
OPTIONAL = "_picows_buffer"
FALLBACK_WARNING = (
    "hubbub: the compiled core could not be built ({error}); installing the pure-Python core "
    "instead (same behaviour, slower). Install a C compiler (gcc) and reinstall for the fast path.")


class OptionalBuildExt(build_ext):
    """build_ext that leaves the extensions out, with one warning, when they cannot be compiled."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler at all: setuptools fails before compiling
            self._fall_back(error)

    def build_extensions(self):
        try:
            super().build_extensions()
        except Exception as error:  # the compiler is missing or refused the code
            self._fall_back(error)

    def build_extension(self, ext):
        if not ext.name.endswith(OPTIONAL):
            return super().build_extension(ext)
        try:
            return super().build_extension(ext)
        except Exception as error:
            self.extensions.remove(ext)  # the last one: the loop over them ends here
            print(f"hubbub: {OPTIONAL} was not built ({str(error).strip()[:200]}); the fast port keeps "
                  "picows' own 1 KiB write buffer per connection", file=sys.stderr)

    def _fall_back(self, error):
        self.extensions = []
        self.distribution.ext_modules = []
        print(FALLBACK_WARNING.format(error=str(error).strip().splitlines()[-1][:200]),
              file=sys.stderr)


def extensions():
    if os.environ.get("HUBBUB_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    debug = os.environ.get("HUBBUB_DEBUG_BUILD") == "1"
    compile_args = ["-O3"] if debug else ["-O3", "-g0"]
    link_args = [] if debug else ["-s"]
    directives = {
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
        "embedsignature": True,
    }
    modules = cythonize(
        [Extension(f"hubbub.{name}", [f"ext/hubbub/{name}.pyx"],
                   extra_compile_args=compile_args, extra_link_args=link_args)
         for name in MODULES],
        include_path=["ext"], compiler_directives=directives)
    return modules + picows_buffer(compile_args, link_args, directives)


def picows_buffer(compile_args, link_args, directives):
    """The optional module, or nothing when picows (its .pxd) is not importable."""
    try:
        import picows
        from Cython.Build import cythonize

        return cythonize(
            [Extension(f"hubbub.{OPTIONAL}", [f"ext/hubbub/{OPTIONAL}.pyx"],
                       define_macros=[("HUBBUB_PICOWS_VERSION", f'"{picows.__version__}"')],
                       extra_compile_args=compile_args, extra_link_args=link_args)],
            include_path=["ext", os.path.dirname(os.path.dirname(picows.__file__))],
            compiler_directives=directives)
    except Exception as error:
        print(f"hubbub: {OPTIONAL} is left out ({error}); the fast port keeps picows' own 1 KiB write "
              "buffer per connection", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
