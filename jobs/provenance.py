"""What made a job's data, as OUT/job.json records it: the command line, this package's
version and git commit, and the versions of the libraries whose code shaped the pixels.

Everything here is read locally and never fails a job: a missing library is recorded as
null, and so are the commit and the dirty flag when git is absent, slow, or the code does
not run from a git checkout of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = "synthaug"
# The folder holding augment/, jobs/, ...: a checkout's root when the code runs from one.
CODE_ROOT = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_S = 5.0

# Libraries whose code decides what lands in a shard (decoding, resizing, augmenting,
# generating, scoring, writing), by key; each key lists the distributions that provide it.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "numpy": ("numpy",),
    "pillow": ("pillow",),
    "albumentations": ("albumentations",),
    # albumentations' pixel operations are OpenCV's; any of its wheels provides `cv2`.
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
               "opencv-contrib-python"),
    "scikit-learn": ("scikit-learn",),
    "scipy": ("scipy",),
    "matplotlib": ("matplotlib",),
    "pyarrow": ("pyarrow",),
    "ray": ("ray",),
    "diffusers": ("diffusers",),
    "safetensors": ("safetensors",),
}


def distribution_version(*names: str) -> str | None:
    """The installed version of the first of `names` that is installed, else None."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str | None]:
    """{"python": ..., library key: version or None} for every key of `LIBRARIES`."""
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    found.update({key: distribution_version(*names) for key, names in LIBRARIES.items()})
    return found


def _git(root: Path, *args: str) -> str | None:
    """`git -C root ARGS`'s output, or None when git is absent, fails or takes too long."""
    # The caller's GIT_DIR / GIT_WORK_TREE would point git at another repository.
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env["GIT_OPTIONAL_LOCKS"] = "0"  # `status` must not take the index lock of someone's checkout
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, env=env,
                              timeout=GIT_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_state(root: Path = CODE_ROOT) -> dict[str, Any]:
    """{"commit", "dirty"} of the git checkout whose root is `root`; nulls when there is none.

    `dirty` counts changes to tracked files only (as `git describe --dirty` does)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    # An installed copy may sit inside some other repository (a venv in a checkout): its
    # commit is not this code's, so only a checkout rooted exactly here counts.
    if top is None or Path(top.strip()).resolve() != root.resolve():
        return {"commit": None, "dirty": None}
    commit = _git(root, "rev-parse", "--verify", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip() if commit else None, "dirty": None if status is None else bool(status.strip())}


def package_state(root: Path = CODE_ROOT) -> dict[str, Any]:
    """{"version", "commit", "dirty"} of the synthaug code that runs."""
    return {"version": distribution_version(PACKAGE), **code_state(root)}


def provenance(command: list[str] | None) -> dict[str, Any]:
    """job.json's provenance fields: `command` (None when the job was started as a library
    call), `synthaug` (version, commit, dirty) and `versions` (the libraries')."""
    return {"command": list(command) if command is not None else None, "synthaug": package_state(),
            "versions": library_versions()}


def earlier_runs(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The provenance of every earlier run of the job (its shards may come from several runs,
    each perhaps with other code): the previous job.json's list plus its own run, oldest first."""
    if not previous:
        return []
    own = {"run": previous.get("runs"), "status": previous.get("status"), "updated": previous.get("updated"),
           **{key: previous.get(key) for key in ("command", "synthaug", "versions")}}
    return [*previous.get("earlier_runs", []), own]
