"""scripts/setup_env.sh finds a Python >= 3.11 even where the image's python3 is 3.10.

Each test runs a copy of the script in its own directory, with a PATH of hand-picked tools
(no /usr/bin, whose python3 here is 3.11), a fresh HOME, and pip kept off every index, so
nothing is downloaded and no pyenv shim answers in place of the Python under test.
"""

import os
import shutil
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from timeouts import scaled_timeout

REPO = Path(__file__).resolve().parent.parent
PYTHON_310 = Path("/root/.pyenv/versions/3.10.13/bin/python3.10")
PYTHON_311 = Path("/root/.pyenv/versions/3.11.7/bin/python3.11")
TOOLS = ("bash", "sh", "env", "dirname", "rm", "curl")
NO_PYTHON = "setup_env.sh: no Python >= 3.11 found and uv could not fetch one: install python3.11"

pytestmark = pytest.mark.skipif(
    not (PYTHON_310.exists() and PYTHON_311.exists()), reason="needs pyenv's 3.10.13 and 3.11.7"
)


def tiny_wheel(directory: Path) -> Path:
    """A package that, like the pinned stack, refuses to install on Python 3.10."""
    wheel = directory / "tiny-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("tiny/__init__.py", "ANSWER = 42\n")
        archive.writestr(
            "tiny-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: tiny\nVersion: 1.0\nRequires-Python: >=3.11\n",
        )
        archive.writestr(
            "tiny-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(
            "tiny-1.0.dist-info/RECORD",
            "tiny/__init__.py,,\ntiny-1.0.dist-info/METADATA,,\ntiny-1.0.dist-info/WHEEL,,\n"
            "tiny-1.0.dist-info/RECORD,,\n",
        )
    return wheel


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A checkout with only scripts/setup_env.sh and a requirements file naming tiny."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "setup_env.sh", root / "scripts" / "setup_env.sh")
    (root / "requirements.txt").write_text(f"{tiny_wheel(tmp_path)}\n")
    return root


def bin_dir(tmp_path: Path, **programs: Path) -> Path:
    """The PATH under test: the shell tools plus ``programs`` (name -> target)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in TOOLS:
        (directory / tool).symlink_to(shutil.which(tool, path="/usr/bin:/bin"))
    for name, target in programs.items():
        (directory / name).symlink_to(target)
    return directory


def setup_env(project: Path, path: Path, **env: str) -> subprocess.CompletedProcess:
    home = project.parent / "home"
    home.mkdir(exist_ok=True)
    environment = {
        "PATH": str(path),
        "HOME": str(home),
        # pip sees no index and no config (this machine's points at local mirrors); curl
        # goes through a closed port: fetching uv fails at once, as offline.
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "https_proxy": "http://127.0.0.1:9",
        **env,
    }
    return subprocess.run(
        [str(project / "scripts" / "setup_env.sh")],
        cwd=project.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=scaled_timeout(120),
        check=False,
    )


def venv_python_version(project: Path) -> tuple[int, int]:
    """The venv's Python version, once it has imported the installed package."""
    output = subprocess.run(
        [
            str(project / ".venv" / "bin" / "python"),
            "-c",
            "import sys, tiny; assert tiny.ANSWER == 42; print(*sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    major, minor = map(int, output.split())
    return major, minor


def test_python3_3_10_first_on_path_still_gives_a_3_11_venv(project, tmp_path):
    path = bin_dir(tmp_path, python3=PYTHON_310, **{"python3.11": PYTHON_311})

    result = setup_env(project, path)

    assert result.returncode == 0, result.stderr
    assert f"creating .venv with Python 3.11.7 ({path}/python3.11)" in result.stdout
    assert venv_python_version(project) == (3, 11)


def test_uv_fetches_a_python_when_none_on_path_is_new_enough(project, tmp_path):
    calls = tmp_path / "uv_calls"
    uv = tmp_path / "fake_uv"
    # uv's answers for a machine where `uv python install 3.11` put 3.11.7 in place.
    uv.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {calls}\n'
        f'if [ "$1 $2" = "python find" ]; then echo {PYTHON_311}; fi\n'
    )
    uv.chmod(uv.stat().st_mode | stat.S_IEXEC)
    path = bin_dir(tmp_path, python3=PYTHON_310, uv=uv)

    result = setup_env(project, path)

    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["python install --quiet 3.11", "python find 3.11"]
    assert venv_python_version(project) == (3, 11)


def test_no_python_new_enough_and_no_uv_fails_at_once_in_one_line(project, tmp_path):
    path = bin_dir(tmp_path, python3=PYTHON_310)

    start = time.monotonic()
    result = setup_env(project, path)
    elapsed = time.monotonic() - start

    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("setup_env.sh:")]
    assert len(errors) == 1 and errors[0].startswith(NO_PYTHON), result.stderr
    assert result.stderr.splitlines()[-1] == errors[0]
    assert not (project / ".venv").exists()
    assert elapsed < 30


def test_python_set_to_3_10_is_refused(project, tmp_path):
    path = bin_dir(tmp_path, **{"python3.11": PYTHON_311})

    result = setup_env(project, path, PYTHON=str(PYTHON_310))

    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"setup_env.sh: PYTHON={PYTHON_310} is not a working Python >= 3.11: point it at one"
    ]
    assert not (project / ".venv").exists()


def test_a_venv_left_with_python_3_10_is_rebuilt(project, tmp_path):
    subprocess.run([str(PYTHON_310), "-m", "venv", "--without-pip", project / ".venv"], check=True)
    path = bin_dir(tmp_path, python3=PYTHON_310, **{"python3.11": PYTHON_311})

    result = setup_env(project, path)

    assert result.returncode == 0, result.stderr
    assert "setup_env.sh: .venv does not hold a working Python >= 3.11: rebuilding it" in (
        result.stdout
    )
    assert venv_python_version(project) == (3, 11)
