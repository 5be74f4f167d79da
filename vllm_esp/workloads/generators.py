"""Synthetic stand-ins for the LoongServe evaluation datasets.

The real datasets cannot be downloaded on these machines, so each is replaced by a documented
parametric law fitted by eye to the ranges the LoongServe paper reports for its preprocessing
(tokenised with the LWM-1M tokenizer). Every parameter can be overridden; the defaults are:

=============  =====================================================  ==========================
workload       prompt length (tokens)                                 output length (tokens)
=============  =====================================================  ==========================
sharegpt       TruncLogNormal(median=800,   σ=1.0, [4, 16384])        TruncLogNormal(250, 0.8, [4, 999])
leval          TruncLogNormal(median=12000, σ=1.0, [2700, 210500])    TruncLogNormal(80, 1.0, [4, 1024])
lveval         TruncLogNormal(median=90000, σ=0.9, [15100, 497300])   TruncLogNormal(15, 0.7, [4, 256])
mixed          equal parts of the three above, shuffled (LoongServe's "Mixed": 1500 of each)
zipf<α>        PowerLaw(α, [10, 200000])                              the output law of the dataset
                                                                      whose prompt range covers L
=============  =====================================================  ==========================

Paper ranges for comparison: ShareGPT prompts are multi-turn conversations with outputs
< 1000 tokens; L-Eval prompts span 2.7K–210.5K; LV-Eval 15.1K–497.3K with short answers.
The medians are our choice (the paper gives ranges, not medians), which matters for absolute
request rates, not for which system wins.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vllm_esp.workloads.distributions import PowerLaw, TruncLogNormal
from vllm_esp.workloads.types import Request, renumber


@dataclass(frozen=True, slots=True)
class LengthSpec:
    """A workload whose prompt and output lengths are drawn independently."""

    name: str
    prompt: TruncLogNormal | PowerLaw
    output: TruncLogNormal

    def sample(self, n: int, rng: random.Random) -> list[Request]:
        out = []
        for i in range(n):
            p = self.prompt.sample(rng)
            o = self.output.sample(rng)
            out.append(Request(i, p, o))
        return out


SHAREGPT = LengthSpec(
    "sharegpt", TruncLogNormal(800, 1.0, 4, 16384), TruncLogNormal(250, 0.8, 4, 999))
LEVAL = LengthSpec(
    "leval", TruncLogNormal(12000, 1.0, 2700, 210500), TruncLogNormal(80, 1.0, 4, 1024))
LVEVAL = LengthSpec(
    "lveval", TruncLogNormal(90000, 0.9, 15100, 497300), TruncLogNormal(15, 0.7, 4, 256))
BASE_SPECS = {s.name: s for s in (SHAREGPT, LEVAL, LVEVAL)}
WORKLOADS = ("sharegpt", "leval", "lveval", "mixed", "zipf1.0", "zipf1.2", "zipf1.4")


def _mixed(n: int, rng: random.Random) -> list[Request]:
    """Equal parts of the three base datasets (remainder to the first ones), shuffled."""
    parts = []
    specs = list(BASE_SPECS.values())
    for k, spec in enumerate(specs):
        parts += spec.sample(n // len(specs) + (1 if k < n % len(specs) else 0), rng)
    rng.shuffle(parts)
    return renumber(parts)


def _zipf(n: int, alpha: float, rng: random.Random, beta: float = 0.0) -> list[Request]:
    """Zipf(α) prompt lengths; output length from the base dataset covering that prompt length.

    LoongServe builds its Zipf mixes by picking, for each sampled length, a real request of the
    nearest prompt length from ShareGPT ∪ L-Eval ∪ LV-Eval, so outputs follow the dataset the
    length came from. We mimic that by prompt-length band: below L-Eval's minimum → ShareGPT
    outputs, below LV-Eval's minimum → L-Eval outputs, else LV-Eval outputs.
    """
    law = PowerLaw(alpha, 10, 200_000, beta)
    out = []
    for i in range(n):
        p = law.sample(rng)
        if p < LEVAL.prompt.lo:
            o = SHAREGPT.output.sample(rng)
        elif p < LVEVAL.prompt.lo:
            o = LEVAL.output.sample(rng)
        else:
            o = LVEVAL.output.sample(rng)
        out.append(Request(i, p, o))
    return out


def generate(name: str, n: int, seed: int = 0) -> list[Request]:
    """``n`` requests of workload ``name`` (see module doc), all with ``arrival = 0``.

    Arrival times are added separately (``arrivals.poisson``) so a rate sweep replays the same
    requests at every rate.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(f"workload:{name}:{seed}")
    if name in BASE_SPECS:
        return BASE_SPECS[name].sample(n, rng)
    if name == "mixed":
        return _mixed(n, rng)
    if name.startswith("zipf"):
        try:
            alpha = float(name[4:])
        except ValueError:
            raise ValueError(f"zipf workload needs an exponent, e.g. zipf1.2, got {name!r}")
        return _zipf(n, alpha, rng)
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
