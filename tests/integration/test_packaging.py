"""What a package index gets, installed as a user would (issue 18).

``scripts/wheel`` builds the sdist and a manylinux wheel; the wheel installs
in a fresh virtual environment and loads the compiled core, stripped of
debug info. The sdist installed where the compiler fails (``CC`` names a
compiler that does not exist: the same spawn error as a machine without
gcc) still installs, and hubbub runs its pure-Python core with one warning.

Slow (a compile and two installs, ~2 min): one test builds everything once.
"""
from __future__ import annotations

import os
import subprocess
import venv
import zipfile
from pathlib import Path

import hubbub

ROOT = Path(__file__).resolve().parents[2]


def run(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def elf_sections(path: Path) -> str:
    return run("readelf", "--section-headers", "--wide", path).stdout


def test_the_wheel_is_manylinux_and_stripped_and_the_sdist_falls_back_without_a_compiler(tmp_path):
    dist = tmp_path / "dist"
    run(ROOT / "scripts" / "wheel", dist)
    wheels = list(dist.glob("*.whl"))
    sdists = list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    wheel = wheels[0]
    assert "manylinux" in wheel.name and wheel.name.startswith("hubbub-"), wheel.name

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "hubbub/py.typed" in names
        assert any(name.endswith("licenses/LICENSE") for name in names)
        objects = [name for name in names if name.endswith(".so")]
        assert len(objects) == 5, objects  # _trie, _ring, _fanout, _writer and _picows_buffer
        archive.extractall(tmp_path / "unpacked", members=objects)
    for name in objects:
        sections = elf_sections(tmp_path / "unpacked" / name)
        assert ".debug_info" not in sections and ".symtab" not in sections, f"{name} is not stripped"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # The wheel needs no compiler at all: none is reachable while it installs.
    no_compiler = {"CC": "/nonexistent/cc", "CXX": "/nonexistent/c++"}
    run(*pip, wheel, env=no_compiler)
    loaded = run(python, "-W", "error::RuntimeWarning", "-c",
                 "import hubbub, hubbub.transports.native as native; "
                 "print(hubbub.NATIVE, hubbub.__version__, native.shrink_write_buffer is not None)",
                 env={"HUBBUB_NO_EXTENSIONS": ""})
    assert loaded.stdout.split() == ["True", hubbub.__version__, "True"], loaded.stdout
    assert run(python, "-m", "hubbub.cli", "--version").stdout.strip() == \
        f"hubbub {hubbub.__version__} (compiled core)"

    # The sdist where compiling fails: it still installs, without the compiled core.
    run(*pip, "--no-deps", "--force-reinstall", "--no-cache-dir", sdists[0], env=no_compiler)
    fallback = run(python, "-c", """
import asyncio, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import hubbub
from hubbub import Config, Hub

async def main():
    hub = Hub(Config(dev=True))
    print(await hub.publish("a.b", {"x": 1}) is not None)

asyncio.run(main())
print(hubbub.NATIVE, len([w for w in caught if "pure-Python core" in str(w.message)]))
""", env={"HUBBUB_NO_EXTENSIONS": ""})
    assert fallback.stdout.split() == ["True", "False", "1"], fallback.stdout + fallback.stderr
