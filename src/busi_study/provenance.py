"""Provenance recorded with every result, model card and report: code version, software, hardware."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: The repository this package is installed from (editable install / source checkout).
REPO = Path(__file__).resolve().parents[2]

#: Packages whose versions every report records.
TRACKED_PACKAGES = (
    "busi_study", "numpy", "pandas", "scikit-learn", "scipy", "matplotlib", "seaborn", "opencv-python-headless",
    "pillow", "ImageHash", "tensorflow-cpu", "tensorflow", "keras", "jax", "torch", "papermill", "nbconvert",
    "nbclient", "ipykernel", "jupyterlab", "kagglehub", "PyYAML",
)


def git_info(repo: Path) -> dict:
    """Commit hash, branch and whether the work tree has uncommitted changes (``dirty``)."""

    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD")
    return {
        "commit": commit or "unknown (not a git checkout)",
        "branch": run("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(run("status", "--porcelain", "--untracked-files=no")) if commit else None,
    }


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (absent packages are left out)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Vector instruction sets that decide which TensorFlow/oneDNN CPU kernels run (and so how sums are rounded).
VECTOR_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """The :data:`VECTOR_FEATURES` this CPU has (``None`` where /proc/cpuinfo cannot be read).

    Recorded because trained networks are bit-identical only on CPUs with the same vector instructions:
    oneDNN picks other kernels (other summation orders) on an AVX2-only CPU than on an AVX-512 one."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in VECTOR_FEATURES if f in flags]
    except OSError:
        pass
    return None


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpus() -> list[str]:
    """GPU names from ``nvidia-smi -L`` (empty list when there is none)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def hardware() -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib(),
        "gpus": gpus(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
