"""Config validation: every error names the field path and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from augment.errors import ConfigError
from jobs.config import json_schema, load_config, parse_config

BASE = {
    "source": {"kind": "digits", "image_size": 16},
    "quota": {"multiplier": 2.0},
    "augment": {"transforms": [{"name": "HorizontalFlip", "p": 0.5}]},
}


def with_(path: str, value: object) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    raw["augment"] = {"transforms": [dict(t) for t in BASE["augment"]["transforms"]]}
    keys = path.split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return raw


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return str(caught.value)


def test_valid_config_parses_and_hashes_stably() -> None:
    a, b = parse_config(BASE), parse_config(BASE)
    assert a.content_hash() == b.content_hash()
    assert a.source.image_size == 16


def test_execution_settings_do_not_change_the_hash() -> None:
    a = parse_config(BASE)
    b = parse_config(with_("execution", {"num_workers": 7}))
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != parse_config(with_("seed", 1)).content_hash()


def test_report_presentation_settings_do_not_change_the_hash_but_scoring_ones_do() -> None:
    a = parse_config(BASE)
    shown = parse_config(with_("report", {"sweep": [0, 1], "utility": {"steps": 5}, "grid_per_class": 3}))
    assert a.content_hash() == shown.content_hash()  # rerunning only redoes the report
    for scoring in ({"k": 3}, {"features": ["random"]}, {"extractor_steps": 10}):
        assert a.content_hash() != parse_config(with_("report", scoring)).content_hash()
    assert a.content_hash() != parse_config(with_("filter", {"min_confidence": 0.5})).content_hash()


def test_report_and_filter_errors_name_the_field() -> None:
    assert "report.features[0]: 'fid'" in error_of(with_("report", {"features": ["fid"]}))
    assert "report.reference.colour" in error_of(with_("report", {"reference": {"kind": "digits", "colour": "rgb"}}))
    assert "filter.min_confidence: 1.5" in error_of(with_("filter", {"min_confidence": 1.5}))
    assert "no synthetic rows to filter" in error_of({**with_("filter", {"drop_near_copies": True}),
                                                      "quota": None, "augment": None})


def test_probability_out_of_range_names_the_transform_index() -> None:
    raw = with_("augment", {"transforms": [{"name": "HorizontalFlip"}, {"name": "VerticalFlip"},
                                           {"name": "Transpose", "p": 1.5}]})
    message = error_of(raw)
    assert "augment.transforms[2].p: 1.5" in message
    assert "less than or equal to 1" in message


def test_unknown_key_is_an_error() -> None:
    message = error_of(with_("output.shard_rows", 10))
    assert "output.shard_rows" in message and "Extra inputs" in message


def test_unknown_transform_is_a_config_error() -> None:
    message = error_of(with_("augment", {"transforms": [{"name": "NoSuchTransform"}]}))
    assert "augment.transforms[0]" in message and "NoSuchTransform" in message


def test_bad_transform_parameter_is_a_config_error() -> None:
    message = error_of(with_("augment", {"transforms": [{"name": "Rotate", "params": {"limit": "wide"}}]}))
    assert "augment.transforms[0]" in message and "limit" in message


def test_quota_needs_exactly_one_mode() -> None:
    assert "exactly one" in error_of(with_("quota", {"multiplier": 2.0, "balance": True}))
    assert "exactly one" in error_of(with_("quota", {}))
    assert "quota.multiplier: 0.5" in error_of(with_("quota", {"multiplier": 0.5}))


def test_unknown_source_kind_names_the_value() -> None:
    message = error_of(with_("source", {"kind": "imagenet"}))
    assert "source" in message and "imagenet" in message


def test_python_tag_in_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(path)


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("source: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_relative_source_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "job.yaml"
    path.write_text(
        "source: {kind: folder, root: ../images}\nquota: {balance: true}\n"
        "augment: {transforms: [{name: HorizontalFlip}]}\n"
    )
    config = load_config(path)
    assert config.source.root == (tmp_path / "images").resolve()


def test_schema_lists_the_sections() -> None:
    schema = json_schema()
    assert {"source", "quota", "augment", "output", "execution"} <= set(schema["properties"])


def test_shipped_configs_validate() -> None:
    for path in sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml")):
        load_config(path)
