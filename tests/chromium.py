"""Debian's Chromium as the FiftyOne App test and the README screenshot drive it (through
Playwright, nothing downloaded): headless, and nothing that reaches out to the network on its
own; a fresh profile per run."""

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
