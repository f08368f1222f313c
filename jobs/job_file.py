"""OUT/job.json's paths: those inside the job folder are stored relative to it, so a moved or
renamed folder (or a store job's staging copy on another machine) still reads; those
outside it stay absolute. Older job.json files hold absolute paths everywhere and read as before.
"""

from __future__ import annotations

from pathlib import Path

JOB_FILE = "job.json"


def job_relative(path: Path | str, out: Path) -> str:
    """`path` as job.json stores it: relative to the job folder `out` when inside it
    (POSIX separators), else absolute."""
    path = Path(path)
    try:
        return path.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:  # outside: as given when absolute (a config's paths are), symlinks kept
        return str(path if path.is_absolute() else path.resolve())


def job_path(stored: str, out: Path) -> Path:
    """A path job.json stores, as a path now: a relative one lies in the job folder `out`; an
    absolute one (outside the folder, or from an older job.json) is taken as it is."""
    path = Path(stored)
    return path if path.is_absolute() else out / path
