"""The request record shared by generators, loaders, the simulator and the replay client.

A workload is only lengths and arrival times: the simulator needs nothing else, and the replay
client synthesises prompts of the right token length itself. Keeping the record this small is
what lets a simulated run and a real run consume the very same trace file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a workload."""

    request_id: int  # dense index inside its workload, stable across rates
    prompt_len: int  # input tokens (>= 1)
    output_len: int  # tokens to generate, including the first one produced by prefill (>= 1)
    arrival: float = 0.0  # seconds since the start of the run

    def __post_init__(self) -> None:
        if self.prompt_len < 1 or self.output_len < 1:
            raise ValueError(f"request {self.request_id}: lengths must be >= 1, got "
                             f"prompt_len={self.prompt_len} output_len={self.output_len}")
        if self.arrival < 0:
            raise ValueError(f"request {self.request_id}: negative arrival {self.arrival}")

    def at(self, arrival: float) -> "Request":
        """The same request arriving at ``arrival`` seconds."""
        return replace(self, arrival=arrival)


def renumber(requests: list[Request]) -> list[Request]:
    """Give requests dense ids 0..n-1 in list order (after shuffling or concatenation)."""
    return [replace(r, request_id=i) for i, r in enumerate(requests)]
