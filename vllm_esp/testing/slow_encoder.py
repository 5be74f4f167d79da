"""A deliberately slow prompt encoder, for tests that the scheduler never waits for the encoder.

``encoder="vllm_esp.testing.slow_encoder:GatedEncoder"`` in the retrieval predictor's options.
Every ``encode`` call sleeps until the file named by ``$VLLM_ESP_TEST_ENCODER_GATE`` exists (at
most ``$VLLM_ESP_TEST_ENCODER_MAX_S`` seconds, default 120), then encodes like the hashing
encoder. A test keeps the gate closed while it drives the scheduler, so any step that waited for
an embedding would take minutes, and opens it to check that the predictions then arrive. The
encoder runs in the background prediction process, which inherits the environment.
"""

from __future__ import annotations

import os
import time

from vllm_esp.predictor.encoder import HashingEncoder

GATE_ENV = "VLLM_ESP_TEST_ENCODER_GATE"
MAX_ENV = "VLLM_ESP_TEST_ENCODER_MAX_S"


class GatedEncoder(HashingEncoder):
    name = "gated-stub"

    def encode(self, texts: list[str]):
        gate = os.environ.get(GATE_ENV)
        deadline = time.monotonic() + float(os.environ.get(MAX_ENV, "120"))
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().encode(texts)
