"""Add an ``esp`` field to ``SchedulerStats`` so per-instance stats reach the API server.

EngineCore sends ``SchedulerStats`` to the front end with msgspec, which encodes and decodes a
dataclass by its declared fields: a subclass or an ad-hoc attribute is dropped on the way. The
field (a dict, default None) is registered on the dataclass so both ends carry it; the ESP
stat logger reads it. It must be applied before the first encode/decode in each process, which
the plugin (loaded at process start by vLLM) guarantees. Stock code never sets it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vllm_esp_patches._patching import Patch

FIELD = "esp"


def _install(stats_cls) -> None:
    if not dataclasses.is_dataclass(stats_cls):
        raise TypeError(f"{stats_cls} is no longer a dataclass; the esp stats field needs review")
    if FIELD in stats_cls.__dataclass_fields__:
        return
    f = dataclasses.field(default=None)
    f.name = FIELD
    f.type = dict[str, Any] | None
    f._field_type = dataclasses._FIELD  # what dataclasses.fields() filters on
    stats_cls.__dataclass_fields__[FIELD] = f
    stats_cls.__annotations__[FIELD] = dict[str, Any] | None
    setattr(stats_cls, FIELD, None)


PATCH = Patch(
    name="scheduler_stats_field",
    target="vllm.v1.metrics.stats:SchedulerStats",
    install=_install,
    why="per-instance ESP stats survive EngineCore -> front-end serialisation",
)
