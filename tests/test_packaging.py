"""`pip install .` (not editable) must carry every module and every YAML config."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(out.glob("sparsenet-*.whl"))


def test_wheel_holds_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "sparsenet").rglob("*.py")}
    configs = {
        "sparsenet/conf/" + p.relative_to(REPO / "conf").as_posix()
        for p in (REPO / "conf").rglob("*.yaml")
    }
    assert modules - names == set()
    assert configs - names == set()


def test_installed_wheel_finds_its_configs(wheel, tmp_path):
    """Installed into a fresh environment, run outside the repo. The dependencies come from the
    environment the tests run in (a virtual one or not): its site-packages folders are listed
    in a .pth file, which adds them after the new environment's own (and, being plain paths,
    does not run this environment's editable-install hook, so the checkout stays out of reach)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site) / "_dependencies_of_the_test_env.pth").write_text("\n".join(ours) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    proc = subprocess.run(
        [python, "-c", "import sparsenet, sys; print(sparsenet.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(venv) in proc.stdout  # the installed copy, not the checkout
    proc = subprocess.run(
        [python, "-m", "sparsenet", "list"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "lenet5" in proc.stdout and "group_lasso" in proc.stdout
    # Hydra composes the packaged configs: print the resolved job config of a bundle.
    proc = subprocess.run(
        [python, "-m", "sparsenet", "experiment=smoke", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: fake" in proc.stdout and "name: lenet5" in proc.stdout
