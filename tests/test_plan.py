"""Planning is a pure function: same inputs → same shards, ids and seeds; quotas add up."""

from __future__ import annotations

from collections import Counter

import pytest

from augment.errors import ConfigError
from augment.sources.base import SourceRecord
from jobs.config import QuotaConfig
from jobs.plan import ShardSpec, derive_seed, make_plan, split_records
from jobs.quota import PlanStep

NAMES = ["a", "b", "c"]


def records(per_class: dict[int, int]) -> list[SourceRecord]:
    out = []
    for label, n in per_class.items():
        out += [SourceRecord(f"{NAMES[label]}/{i:03d}", label, f"{label}/{i}") for i in range(n)]
    return out


def plan_for(quota: QuotaConfig, per_class: dict[int, int], **kw):
    recs = records(per_class)
    return make_plan(class_names=NAMES, train=recs, holdout=[], quota=quota, seed=kw.get("seed", 0),
                     rows_per_shard=kw.get("rows_per_shard", 7), include_real=kw.get("include_real", True))


def test_per_class_quota_counts_real_plus_synthetic() -> None:
    plan = plan_for(QuotaConfig(per_class={"a": 20, "b": 9, "c": 5}), {0: 4, 1: 9, 2: 5})
    assert plan.expected_counts() == {"a": 20, "b": 9, "c": 5}
    assert plan.quota.synthetic == {0: 16, 1: 0, 2: 0}


def test_balance_brings_every_class_to_the_largest() -> None:
    plan = plan_for(QuotaConfig(balance=True), {0: 3, 1: 10, 2: 1})
    assert plan.expected_counts() == {"a": 10, "b": 10, "c": 10}


def test_multiplier_and_synthetic_only() -> None:
    plan = plan_for(QuotaConfig(multiplier=2.5), {0: 4, 1: 2}, include_real=False)
    assert plan.expected_counts() == {"a": 6, "b": 3}


def test_impossible_quotas_are_refused_with_the_class_named() -> None:
    with pytest.raises(ConfigError, match=r"quota.per_class\['a'\]: 2 is below the 4 real"):
        plan_for(QuotaConfig(per_class={"a": 2}), {0: 4})
    with pytest.raises(ConfigError, match="unknown class 'z'"):
        plan_for(QuotaConfig(per_class={"z": 2}), {0: 4})
    with pytest.raises(ConfigError, match=r"\['c'\]: 5 asked, but the class has no usable"):
        plan_for(QuotaConfig(per_class={"c": 5}), {0: 4})


def test_ids_unique_seeds_distinct_and_plan_deterministic() -> None:
    a = plan_for(QuotaConfig(multiplier=3.0), {0: 5, 1: 3})
    b = plan_for(QuotaConfig(multiplier=3.0), {0: 5, 1: 3})
    assert [s.to_json() for s in a.train] == [s.to_json() for s in b.train]
    children = [c for s in a.train for p in s.parents for c in p.children]
    assert len({c.id for c in children}) == len(children) == 16
    assert len({c.seed for c in children}) == len(children)
    other = plan_for(QuotaConfig(multiplier=3.0), {0: 5, 1: 3}, seed=1)
    assert [c.seed for s in other.train for p in s.parents for c in p.children] != [c.seed for c in children]


def test_children_spread_evenly_over_parents() -> None:
    plan = plan_for(QuotaConfig(per_class={"a": 4 + 10}), {0: 4})
    per_parent = Counter(len(p.children) for s in plan.train for p in s.parents)
    assert set(per_parent) == {2, 3}


def test_shards_respect_rows_per_shard_and_round_trip_json() -> None:
    plan = plan_for(QuotaConfig(multiplier=2.0), {0: 20, 1: 10}, rows_per_shard=8)
    assert sum(s.rows for s in plan.train) == 60
    assert all(s.rows < 8 + 2 for s in plan.train)
    assert [ShardSpec.from_json(s.to_json()) for s in plan.train] == plan.train
    assert len({s.file for s in plan.train}) == len(plan.train)


def test_split_is_seeded_stratified_and_keeps_a_training_record() -> None:
    recs = records({0: 50, 1: 10, 2: 1})
    train, held = split_records(recs, 0.2, seed=3)
    again_train, _ = split_records(recs, 0.2, seed=3)
    assert train == again_train
    assert Counter(r.label for r in held) == {0: 10, 1: 2}
    assert any(r.label == 2 for r in train)
    other, _ = split_records(recs, 0.2, seed=4)
    assert other != train


def test_a_low_data_split_keeps_k_per_class_and_one_holdout_across_seeds() -> None:
    from jobs.config import SplitConfig
    from jobs.plan import job_split

    recs = records({0: 50, 1: 10, 2: 3})
    split = SplitConfig(holdout=0.2, seed=11, train_per_class=5)
    runs = [job_split(recs, split, seed) for seed in (0, 1, 2)]
    holdouts = {tuple(r.id for r in held) for _, held in runs}
    assert len(holdouts) == 1  # split.seed fixes the holdout; the job's seed varies the rest
    for train, held in runs:
        assert Counter(r.label for r in train) == {0: 5, 1: 5, 2: 2}  # class 2: 3 records, 1 held out
        assert not {r.id for r in train} & {r.id for r in held}
        assert [r.id for r in train] == sorted((r.id for r in train), key=[r.id for r in recs].index)
    assert len({tuple(r.id for r in train) for train, _ in runs}) == 3  # other seeds, other images
    assert job_split(recs, SplitConfig(holdout=0.2), 3) == split_records(recs, 0.2, seed=3)


def test_derive_seed_is_stable_and_in_range() -> None:
    assert derive_seed(0, 3, 5) == derive_seed(0, 3, 5)
    assert derive_seed(0, 3, 5) != derive_seed(0, 3, 6)
    assert 0 <= derive_seed(2**40, 1) < 2**63


def test_class_conditional_samples_get_their_own_shards_without_parents() -> None:
    recs = records({0: 4, 1: 2})
    plan = make_plan(class_names=NAMES, train=recs, holdout=[], quota=QuotaConfig(per_class={"a": 10, "b": 7}),
                     seed=1, rows_per_shard=4, include_real=True, steps=(PlanStep("diffusion", "class"),), augment=None)
    assert plan.expected_counts() == {"a": 10, "b": 7}
    generated = [g for s in plan.train for g in s.generated]
    assert len(generated) == 11 and all(not p.children for s in plan.train for p in s.parents)
    assert {s.file for s in plan.train if s.generated} == {"diffusion-00000.parquet", "diffusion-00001.parquet",
                                                          "diffusion-00002.parquet"}
    assert [ShardSpec.from_json(s.to_json()) for s in plan.train] == plan.train
    assert len({g.seed for g in generated}) == 11 and generated[0].id == "diffusion/a/000000"
