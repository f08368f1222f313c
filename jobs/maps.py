"""Label maps from a simulator: the frames a `maps: simulator` step paints.

A label-map step fitted on the job's (image, mask) pairs can paint the masks of simulator
frames instead (sim-to-real through labels). The frames are the rows' parents; they are
rendered where a shard is made, never written, and listed under ids of their own
(`<kind>-maps/sim/<family>/<index>`) so they cannot be confused with the job's source frames.
"""

from __future__ import annotations

from pydantic import TypeAdapter

from augment.errors import ConfigError
from augment.sample import Sample
from augment.seeding import derive_seed
from augment.sources.base import SourceRecord
from jobs.config import JobConfig, SimulatorSourceConfig
from jobs.sources import build_source

_MAPS_STREAM = 12  # the frames' default seed, apart from the job's other random streams
_ADAPTER: TypeAdapter[SimulatorSourceConfig] = TypeAdapter(SimulatorSourceConfig)


class MapFrames:
    """The frames of one `maps: simulator` step as a source of parents."""

    def __init__(self, kind: str, config: SimulatorSourceConfig, job_seed: int) -> None:
        if config.seed is None:  # not the job's seed: a street source would give the same frames
            config = config.model_copy(update={"seed": derive_seed(job_seed, _MAPS_STREAM)})
        self.kind, self.config = kind, config
        self.source = build_source(config, job_seed)
        self.prefix = f"{kind}-maps/"

    @staticmethod
    def from_json(kind: str, raw: dict, job_seed: int) -> MapFrames:
        return MapFrames(kind, _ADAPTER.validate_python(raw), job_seed)

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    def records(self) -> list[SourceRecord]:
        return [SourceRecord(self.prefix + r.id, r.label, r.ref) for r in self.source.records()]

    def load(self, record: SourceRecord) -> Sample:
        return self.source.load(record)


def map_frames(config: JobConfig, class_names: list[str]) -> dict[str, MapFrames]:
    """Each `maps: simulator` step's frames; their class names must be the source's, since the
    step's model learnt the source's label ids."""
    frames: dict[str, MapFrames] = {}
    for number, step in enumerate(config.generate):
        if step.maps != "simulator" or step.simulator is None:
            continue
        made = MapFrames(step.kind, step.simulator, config.seed)
        if made.class_names != class_names:
            raise ConfigError(f"generate[{number}] ({step.kind}).simulator: the {step.simulator.family} simulator's "
                              f"classes {made.class_names} are not the source's {class_names}; a label map's ids "
                              "must mean what they meant in the training masks")
        frames[step.kind] = made
    return frames
