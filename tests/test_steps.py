"""Generate steps in the config and the plan: validation, quota shares, chains (no Ray)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from augment.errors import ConfigError
from augment.sources.base import SourceRecord
from jobs.config import QuotaConfig, parse_config
from jobs.plan import ShardSpec, make_plan
from jobs.quota import PlanAugment, PlanStep, plan_steps, split_quota

NAMES = ["a", "b", "c"]
CGAN_FIT = {"steps": 2, "batch_size": 8, "g_channels": 4, "d_channels": 4, "z_dim": 4}


def config(**sections: object):
    return parse_config({"source": {"kind": "digits", "image_size": 8}, **sections})


def records(per_class: dict[int, int]) -> list[SourceRecord]:
    return [SourceRecord(f"{NAMES[c]}/{i:03d}", c, f"{c}/{i}") for c, n in per_class.items() for i in range(n)]


def test_the_old_single_family_mapping_is_one_step_with_the_same_hash() -> None:
    old = config(quota={"multiplier": 2}, generate={"kind": "cgan", "fit": CGAN_FIT})
    new = config(quota={"multiplier": 2}, generate=[{"kind": "cgan", "fit": CGAN_FIT}])
    assert [s.kind for s in old.generate] == ["cgan"] and old.content_hash() == new.content_hash()
    assert parse_config(old.model_dump(mode="json")) == old  # job.json reads back


@pytest.mark.parametrize("generate, message", [
    ([{"kind": "gan"}], r"generate\[0\]\.kind: 'gan' — unknown generator kind 'gan'; registered: .*cgan, controlnet, cycada, cyclegan, diffusion"),
    ([{"kind": "cgan", "fit": {"z_dim": 1}}], r"generate\[0\]\.fit\.z_dim: 1 — Input should be greater"),
    ([{"kind": "cgan", "sample": {"guidance": 2}}], r"generate\[0\]\.sample\.guidance: 2 — Extra inputs"),
    ([{"kind": "cgan", "num_gpus_per_worker": 1}], r"moved to execution\.num_gpus_per_worker"),
    ([{"kind": "cgan", "per_parent": 3}], r"per_parent: not for a class step \(cgan\); it takes per_class, share"),
    ([{"kind": "cgan"}, {"kind": "cgan"}], r"generate\[1\]: a second 'cgan' step"),
    ([{"kind": "cgan", "share": 0.7}, {"kind": "diffusion", "share": 0.7}], r"shares .* add up to 1\.4"),
    ([{"kind": "cgan", "share": 0.5, "per_class": {"a": 1}}], r"give share or per_class, not both"),
])
def test_bad_steps_are_refused_naming_the_step_and_field(generate: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(quota={"multiplier": 2}, generate=generate)


def test_quota_and_steps_must_go_together_and_after_must_name_a_step() -> None:
    with pytest.raises(ConfigError, match=r"generate\[0\] \(cgan\): a class-conditional step makes rows to a quota, but there is no quota"):
        config(generate=[{"kind": "cgan"}])
    with pytest.raises(ConfigError, match=r"augment\.after: 'diffusion' is not a generate step \(steps: cgan\)"):
        config(quota={"multiplier": 2}, generate=[{"kind": "cgan"}],
               augment={"after": "diffusion", "transforms": [{"name": "HorizontalFlip"}]})


def test_shares_split_each_class_exactly_with_per_class_taken_first() -> None:
    steps = (PlanStep("diffusion", "class", share=0.5), PlanStep("cgan", "class"),
             PlanStep("toy", "class", per_class={"a": 3}))
    by_step, classical = split_quota({0: 10, 1: 7}, steps, PlanAugment(), NAMES)
    assert by_step["toy"] == {0: 3, 1: 0}
    for c, total in {0: 10, 1: 7}.items():  # what per_class leaves, dealt 0.5 / 0.25 / 0.25
        assert by_step["diffusion"][c] + by_step["cgan"][c] + classical[c] + by_step["toy"][c] == total
    # 7 rows left in both classes: 3.5 / 1.75 / 1.75, the two rounded-off rows to the larger fractions
    assert by_step["diffusion"] == {0: 3, 1: 3} and by_step["cgan"] == {0: 2, 1: 2} and classical == {0: 2, 1: 2}
    with pytest.raises(ConfigError, match=r"per_class\['a'\]: 3 is more than the 2 synthetic rows"):
        split_quota({0: 2}, steps, None, NAMES)


def test_a_single_class_step_plans_the_ids_and_seeds_it_always_did() -> None:
    """One class step and no augment: the rows' ids and seeds do not depend on steps existing."""
    from jobs.plan import _CHILD, derive_seed

    plan = make_plan(class_names=NAMES, train=records({0: 4, 1: 2}), holdout=[], quota=QuotaConfig(multiplier=2.5),
                     seed=7, rows_per_shard=4, include_real=True, steps=(PlanStep("cgan", "class"),), augment=None)
    made = [g for s in plan.train for g in s.generated]
    assert [g.id for g in made] == [f"cgan/a/{j:06d}" for j in range(6)] + [f"cgan/b/{j:06d}" for j in range(3)]
    assert [g.seed for g in made] == [derive_seed(7, _CHILD, i) for i in range(9)]


def test_classical_after_a_class_step_deals_children_round_robin_over_its_samples() -> None:
    plan = make_plan(class_names=NAMES, train=records({0: 4, 1: 2}), holdout=[], quota=QuotaConfig(multiplier=3.0),
                     seed=1, rows_per_shard=5, include_real=True,
                     steps=(PlanStep("cgan", "class", share=0.25),), augment=PlanAugment(after="cgan"))
    assert plan.expected_counts() == {"a": 12, "b": 6}
    made = [g for s in plan.train for g in s.generated]
    # a: 8 synthetic = 2 samples + 6 children (3 each); b: 4 = 1 sample + 3 children
    assert Counter(g.label for g in made) == {0: 2, 1: 1}
    assert [len(g.children) for g in made] == [3, 3, 3]
    kids = [c for g in made for c in g.children]
    assert kids[0].id == "cgan/a/000000~classical0" and len({c.seed for c in kids} | {g.seed for g in made}) == 12
    assert sum(s.rows for s in plan.train) == 18 and all(s.rows <= 5 or len(s.generated) == 1 for s in plan.train)
    assert [ShardSpec.from_json(s.to_json()) for s in plan.train] == plan.train


def test_parent_steps_map_every_record_and_count_towards_the_quota() -> None:
    train = records({0: 3, 1: 2})
    plan = make_plan(class_names=NAMES, train=train, holdout=[], quota=QuotaConfig(multiplier=4.0), seed=2,
                     rows_per_shard=6, include_real=True,
                     steps=(PlanStep("transfer", "parent", per_parent=2),), augment=PlanAugment(after="transfer"))
    assert plan.expected_counts() == {"a": 12, "b": 8}
    parents = [p for s in plan.train for p in s.parents]
    assert all(len(p.mapped) == 1 and len(p.mapped[0].rows) == 2 for p in parents)
    assert parents[0].mapped[0].rows[1].id == f"{parents[0].record.id}~transfer1"
    assert sum(len(p.children) for p in parents) == 5  # 4x - real - 2 mapped per record
    assert all(s.children_of == "transfer" for s in plan.train)
    assert [ShardSpec.from_json(s.to_json()) for s in plan.train] == plan.train
    # Without a quota the records are only mapped.
    copy = make_plan(class_names=NAMES, train=train, holdout=[], quota=None, seed=2, rows_per_shard=6,
                     include_real=False, steps=(PlanStep("transfer", "parent"),), augment=None)
    assert copy.expected_counts() == {"a": 3, "b": 2}


def test_plan_steps_reads_the_config() -> None:
    job = config(quota={"multiplier": 2}, generate=[{"kind": "cgan", "share": 0.4, "fit": CGAN_FIT}],
                 augment={"after": "cgan", "transforms": [{"name": "HorizontalFlip"}]})
    steps, augment = plan_steps(job)
    assert steps == (PlanStep("cgan", "class", share=0.4),) and augment == PlanAugment(None, "cgan")


@pytest.fixture
def paint_family() -> Iterator[None]:
    """A label-map family registered for config validation (the toy painter of test_families)."""
    from jobs.registry import register, unregister
    from tests.test_families import ToyPaint

    register(type("ToyPaintCfg", (ToyPaint,), {"name": "toy_paint_cfg", "__module__": __name__}))
    yield
    unregister("toy_paint_cfg")


def test_simulator_maps_are_parents_of_their_own_shards_and_count_towards_the_quota() -> None:
    """A `maps: simulator` step paints its frames' masks: the frames are parents that are not
    written, in shards named after the step; labelled frames' rows count like mapped rows, and
    classical augmentation after the step makes its children from them."""
    train = records({0: 3, 1: 2})
    frames = [SourceRecord(f"paint-maps/sim/x/{i:06d}", i % 2, str(i)) for i in range(4)]
    steps = (PlanStep("paint", "label_map", per_parent=2, maps="simulator"),)
    plan = make_plan(class_names=NAMES, train=train, holdout=[], quota=QuotaConfig(multiplier=4.0), seed=3,
                     rows_per_shard=5, include_real=True, steps=steps, augment=PlanAugment(after="paint"),
                     maps={"paint": frames})
    # a: 3 real + 4 painted (2 frames x 2) + 5 classical = 12; b: 2 + 4 + 2 = 8
    assert plan.expected_counts() == {"a": 12, "b": 8}
    record_shards = [s for s in plan.train if s.maps_from is None]
    map_shards = [s for s in plan.train if s.maps_from == "paint"]
    assert all(not p.mapped and not len(p.children) for s in record_shards for p in s.parents)
    assert all(s.file.startswith("paint-") and not s.include_real and s.children_of == "paint" for s in map_shards)
    mapped = [p for s in map_shards for p in s.parents]
    assert [p.record for p in mapped] == frames
    assert mapped[0].mapped[0].rows[1].id == "paint-maps/sim/x/000000~paint1"
    assert sum(len(p.children) for p in mapped) == 7
    assert [ShardSpec.from_json(s.to_json()) for s in plan.train] == plan.train
    # Unlabelled frames (street) are mapped and counted in the size checks, outside the quota.
    street = [SourceRecord(f"paint-maps/sim/street/{i:06d}", None, str(i)) for i in range(3)]
    copy = make_plan(class_names=NAMES, train=train, holdout=[], quota=None, seed=3, rows_per_shard=5,
                     include_real=True, steps=(PlanStep("paint", "label_map", maps="simulator"),), augment=None,
                     maps={"paint": street})
    assert copy.expected_counts() == {"a": 3, "b": 2, "unlabelled": 3}


@pytest.mark.parametrize("step, message", [
    ({"kind": "toy_paint_cfg", "maps": "simulator"}, r"maps: simulator needs a simulator section"),
    ({"kind": "toy_paint_cfg", "simulator": {"family": "street", "frames": 2}}, r"a simulator section needs maps"),
    ({"kind": "toy_paint_cfg", "maps": "simulator", "simulator": {"family": "street", "frames": 0}},
     r"generate\[0\]\.simulator\.frames: 0 — Input should be greater than or equal to 1"),
])
def test_simulator_maps_config_errors_name_the_field(step: dict, message: str, paint_family: None) -> None:
    with pytest.raises(ConfigError, match=message):
        config(generate=[step])


def test_simulator_maps_classes_must_be_the_sources(paint_family: None) -> None:
    from jobs.maps import map_frames

    job = config(generate=[{"kind": "toy_paint_cfg", "maps": "simulator",
                            "simulator": {"family": "street", "frames": 2, "image_size": 32}}])
    with pytest.raises(ConfigError, match=r"generate\[0\] \(toy_paint_cfg\)\.simulator: the street simulator's "
                                          r"classes \['sky'.* are not the source's \['0'"):
        map_frames(job, [str(d) for d in range(10)])
    sky = map_frames(job.model_copy(update={"seed": 5}), ["sky", "building", "pole", "road", "sidewalk", "tree",
                                                           "sign", "fence", "car", "pedestrian", "bicyclist", "void"])
    frames = sky["toy_paint_cfg"]
    assert [r.id for r in frames.records()] == ["toy_paint_cfg-maps/sim/street/000000",
                                                "toy_paint_cfg-maps/sim/street/000001"]
    sample = frames.load(frames.records()[1])
    assert sample.id == "toy_paint_cfg-maps/sim/street/000001" and sample.mask.shape == (32, 32)
