"""The licence a saved generator carries in its metadata, and the job's record of it.

A model the job fits is under the terms of the data it learnt from: the job writes that
licence to `licence.json` in the checkpoint folder (one file for every family, whatever
metadata files the family itself writes: `config.json`, `synthaug.json`, ...).

A checkpoint made elsewhere names its licence in one of the places such folders hold it,
all of which are read, so that two that disagree are an error rather than a silent pick:

- a `licence` (or `license`) key of any JSON file at the top of the folder: `licence.json`,
  a family's `config.json`, a diffusers `model_index.json`;
- the `__metadata__` of its safetensors files, at the top or one folder down (`unet/`):
  `licence`, `license` or ModelSpec's `modelspec.license`;
- the `license:` of a model card's front matter (`README.md`, as the Hugging Face Hub writes it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from augment.licences import check_licence

LICENCE_FILE = "licence.json"
_JSON_KEYS = ("licence", "license")  # this project's spelling, and the one other tools write
_SAFETENSORS_KEYS = ("licence", "license", "modelspec.license")
_MAX_METADATA_BYTES = 4 * 2**20  # a metadata file, not weights: bigger JSON files are not read


def write_checkpoint_licence(directory: Path, licence: str) -> None:
    """Record `licence` (of the training data) in `directory/licence.json`, atomically; a file
    that already says so is left as it is (the checkpoint's bytes, so its sha256, stay)."""
    directory = Path(directory)
    check_licence(licence, f"{directory}: licence")
    path = directory / LICENCE_FILE
    doc = {"licence": licence, "basis": "the licences of the data the job fitted this model on"}
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _small_file(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() and path.stat().st_size <= _MAX_METADATA_BYTES else None


def _from_json(path: Path) -> list[tuple[str, object]]:
    data = _small_file(path)
    if data is None:
        return []
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return [(f"{path}: {key}", doc[key]) for key in _JSON_KEYS if isinstance(doc, dict) and key in doc]


def _from_safetensors(path: Path) -> list[tuple[str, object]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path}: unreadable safetensors header ({error})") from None
    return [(f"{path}: __metadata__.{key}", meta[key]) for key in _SAFETENSORS_KEYS if key in meta]


def _from_model_card(path: Path) -> list[tuple[str, object]]:
    data = _small_file(path)
    if data is None:
        return []
    text = data.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return []
    front, sep, _ = text[3:].partition("\n---")
    if not sep:
        return []
    try:
        doc = yaml.safe_load(front)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: unreadable front matter ({error})") from None
    return [(f"{path}: {key}", doc[key]) for key in _JSON_KEYS if isinstance(doc, dict) and key in doc]


def checkpoint_licence(directory: Path) -> str | None:
    """The licence a checkpoint folder names (None: it names none); ValueError naming the file
    when a value is not a licence, or naming every place when two places disagree."""
    directory = Path(directory)
    found: list[tuple[str, object]] = []
    for path in sorted(directory.glob("*.json")):
        found += _from_json(path)
    for path in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*/*.safetensors")):
        found += _from_safetensors(path)
    found += _from_model_card(directory / "README.md")
    values = {where: check_licence(value, where) for where, value in found}
    distinct = sorted(set(values.values()))
    if len(distinct) > 1:
        places = "; ".join(f"{where} = {value!r}" for where, value in values.items())
        raise ValueError(f"{directory}: the checkpoint names different licences ({places}); set the step's "
                         "`licence:` to the one its rows are under")
    return distinct[0] if distinct else None
