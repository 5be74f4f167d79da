"""Which decode batch a new prefill batch joins (LoongServe's scale-up by merging): a prefill
batch whose KV lands on instances of existing (paused / pending) batches joins the first of
them, and the others are merged into it; one that touches none opens a new batch. Shared by
the project's manager and the ``loongserve`` policy."""

from __future__ import annotations

from collections.abc import Iterable

from .types import PrefillBatch, ScaleEvent


class BatchJoins:
    def __init__(self, owner: dict[int, int], next_id: int):
        self.owner = owner  # instance -> batch id of the existing batch on it
        self.next_id = next_id
        self.alias: dict[int, int] = {}  # merged batch id -> the batch it joined

    def find(self, batch_id: int) -> int:
        while batch_id in self.alias:
            batch_id = self.alias[batch_id]
        return batch_id

    def target(self, kept_instances: Iterable[int]) -> int:
        """The batch of a prefill batch keeping KV on ``kept_instances`` (merging the batches
        it touches), or a new batch id."""
        touched = sorted({self.find(self.owner[i]) for i in kept_instances if i in self.owner})
        if not touched:
            self.next_id += 1
            return self.next_id - 1
        for other in touched[1:]:
            self.alias[other] = touched[0]
        return touched[0]

    def finish(self, prefills: list[PrefillBatch]) -> list[ScaleEvent]:
        """Point every prefill batch at its batch after all merges; the merge events."""
        for pb in prefills:
            pb.decode_batch_id = self.find(pb.decode_batch_id)
        merged: dict[int, list[int]] = {}
        for x in self.alias:
            merged.setdefault(self.find(x), []).append(x)
        return [ScaleEvent("merge", t, merged_batch_ids=sorted(xs))
                for t, xs in sorted(merged.items())]
