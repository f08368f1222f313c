"""synthaug's base package: sample contracts, data sources, classical augmentation, shards.

`augment` imports none of the other synthaug packages; `simulators`, `domain_transfer` and
`jobs` build on it.
"""
