"""`synthaug fiftyone OUT`: a finished job as a FiftyOne dataset, its saved views and Brain
runs, and optionally the App to browse it (bound to 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

from augment.errors import ConfigError
from augment.fiftyone_export import ExportResult, export, import_fiftyone
from augment.seeding import derive_seed
from jobs.fiftyone_views import embed, near_copy_threshold, nearest_real, reference_settings, run_brain, save_views

log = logging.getLogger("synthaug")

BRAIN_SEED_STREAM = 91
LOOPBACK = "127.0.0.1"


def job_name(out: Path) -> tuple[str, int]:
    """The job's config name and seed, from OUT/job.json (a ConfigError when it is no job folder)."""
    path = Path(out) / "job.json"
    if not path.is_file():
        raise ConfigError(f"{out}: not a synthaug job folder (no job.json)")
    config = json.loads(path.read_text()).get("config", {})
    return str(config.get("name") or Path(out).name), int(config.get("seed") or 0)


def export_job(out: Path, name: str | None = None, *, include_real: bool = True, brain: bool = True
               ) -> tuple[Any, ExportResult, list[str]]:
    """Export OUT to dataset `name` (default: the job's name); then, when something changed or
    the Brain runs are missing, the report-feature fields, Brain runs and saved views."""
    out = Path(out)
    for noisy in ("fiftyone", "eta"):  # FiftyOne's own INFO lines would repeat ours
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not (out / "shards" / "_manifest.json").is_file():
        raise ConfigError(f"{out}: no shards/_manifest.json (is the job finished?)")
    default_name, seed = job_name(out)
    dataset, result = export(out, name or default_name, include_real=include_real)
    quality = reference_settings(out)
    threshold = None
    if quality is None:
        log.info("fiftyone: %s has no report reference; no features, Brain runs or near-copy view", out)
    else:
        threshold = near_copy_threshold(quality)
        changed = result.added or result.updated or result.removed
        if brain and len(dataset) and (changed or not dataset.list_brain_runs()):
            features = embed(dataset, quality)
            nearest_real(dataset, features)
            run_brain(dataset, features, derive_seed(seed, BRAIN_SEED_STREAM) % 2**32)
    views = save_views(dataset, threshold)
    return dataset, result, views


def check_port(port: int, address: str = LOOPBACK) -> None:
    """A ConfigError when address:port is taken: FiftyOne would silently attach to whatever App
    server answers there (perhaps another user's, on another database) instead of starting ours."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the App server does
        try:
            probe.bind((address, port))
        except OSError as error:
            raise ConfigError(f"fiftyone: cannot serve the App on {address}:{port} ({error.strerror}); "
                              f"choose another --port") from None


def launch(dataset: Any, port: int, address: str = LOOPBACK) -> None:
    """Serve the App for `dataset` on address:port until Ctrl-C or SIGTERM (the CLI turns SIGTERM
    into KeyboardInterrupt), then stop the App server before returning."""
    fo = import_fiftyone()
    check_port(port, address)
    # The address is always passed: with None, FiftyOne serves 0.0.0.0 inside a container.
    # remote=True: no browser is opened here; auto=False: no notebook cell.
    session = fo.launch_app(dataset, port=port, address=address, remote=True, auto=False)
    try:
        print(f"FiftyOne App: http://{address}:{port}/ (Ctrl-C to stop)", flush=True)
        session.wait(-1)  # -1: until interrupted, not until the last browser tab closes
    except KeyboardInterrupt:
        print("FiftyOne App: stopped", flush=True)
    finally:
        # Waits for FiftyOne's service wrapper to terminate the server process. The database
        # service is shared per user and outlives us only while other clients use it.
        session.close()
