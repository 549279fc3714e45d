"""The built wheel: one top-level name (``foresight``), so it installs beside Hugging Face
``datasets``, and every module of the layer folders inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("datasets", "training", "serving", "pipelines")


def test_the_wheel_has_one_top_level_name_and_every_module(tmp_path):
    # built from a copy: an in-tree build would reuse a stale build/ folder
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, src / layer, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("foresight-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"foresight"}, top
    expected = {
        f"foresight/{p.relative_to(ROOT).as_posix()}"
        for layer in LAYERS
        for p in (ROOT / layer).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    missing = sorted(expected - set(names))
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing}"
    assert "foresight/serving/openapi.json" in names
    assert not any(n.startswith("foresight/tests/") for n in names)
