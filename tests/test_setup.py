"""First contact: the README's set-up commands are what CI runs, and the wheel is complete.

* `.ci/run` reads its two commands from the README's "Set-up" section, so they can't drift
  apart; here the README is parsed on its own and compared with what `.ci/run --print` says
  it will run, and with which ``python3`` (the distribution's own, where there is one).
* ``pip wheel .`` gives a wheel with the bundled guest inside, and ``lgemu boot`` from a
  fresh virtual environment holding only that wheel prints, byte for byte, what the source
  tree's lgemu prints.  The wheel is built from a copy of the source tree (pip builds in
  place); lgemu's dependencies come from this interpreter's site-packages through a ``.pth``
  file, so nothing but the build backend is fetched.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT, lgemu_main_in_process

README = REPO_ROOT / "README.md"
CI_RUN = REPO_ROOT / ".ci" / "run"
BUNDLED = Path("lgemu") / "firmware" / "lgemu-guest.elf"


def readme_setup_commands() -> list[str]:
    """The indented (code) lines of the README's "## Set-up" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Set-up"):]
    section = section[:section.index("\n## ", 1)]
    return [line[4:] for line in section.splitlines() if line.startswith("    ")
            and line.strip()]


def test_the_readme_gives_two_commands_for_a_fresh_clone():
    install, test = readme_setup_commands()
    # A virtual environment in the clone: nothing is installed into the system's python3.
    for command in (install, test):
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install ")
    assert install.endswith(" && .venv/bin/lgemu boot")
    # CI judges a run by pytest's closing line: the test command must end with pytest.
    assert test.endswith(" && .venv/bin/python -m pytest -q")


def test_ci_runs_the_readme_commands_verbatim():
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    proc = subprocess.run(["bash", str(CI_RUN), "--print"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    interpreter, *commands = proc.stdout.splitlines()
    assert commands == readme_setup_commands()
    if Path("/usr/bin/python3").exists():
        assert interpreter.startswith("python3: /usr/bin/python3, Python 3.")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel .`` of a copy of the source tree."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip(f"{sys.executable} has no pip")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "lgemu-src"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis", ".benchmarks", "tests", "tools", "guest_kernel"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(work / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0 and "Could not find a version that satisfies" in proc.stderr:
        pytest.skip(f"pip cannot fetch the build backend here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    (built,) = (work / "dist").glob("lgemu-*.whl")
    return built


def test_the_wheel_carries_the_bundled_guest(wheel):
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(BUNDLED.as_posix()) == (REPO_ROOT / "firmware" /
                                                    BUNDLED.name).read_bytes()


def test_the_wheel_carries_every_package_of_the_tree(wheel):
    """`lgemu lab` once failed from an installed copy: lgemu.lab was not in the list."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(name).parent for name in archive.namelist() if name.endswith(".py")}
    tree = {init.parent.relative_to(REPO_ROOT)
            for init in (REPO_ROOT / "lgemu").rglob("__init__.py")}
    assert tree <= shipped, sorted(map(str, tree - shipped))


def test_lgemu_boot_works_from_a_fresh_venv_with_the_wheel(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0 and "no such option: --python" in proc.stderr:
        pytest.skip("this pip is older than 22.3 (no --python)")
    assert proc.returncode == 0, proc.stderr
    # Unicorn, Capstone and friends from this interpreter, behind the venv's own packages.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "test-dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")

    where = subprocess.run([str(python), "-c", "import lgemu.firmware_path as f; "
                            "print(f.bundled_guest())"], cwd=tmp_path, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert Path(where) == Path(purelib) / BUNDLED
    booted = subprocess.run([str(venv / "bin" / "lgemu"), "boot"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                            check=False)
    status, out, err = lgemu_main_in_process(["boot"])
    assert (booted.returncode, booted.stdout, booted.stderr.decode()) == (status, out, err)
    assert status == 0 and b"power down" in out
