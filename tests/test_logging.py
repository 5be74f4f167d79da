"""vllm_esp's loggers log through vLLM's "vllm" logger: its handler, format and level."""

from __future__ import annotations

import logging

import vllm_esp  # noqa: F401 - hangs the "vllm_esp" logger below "vllm"


def test_vllm_esp_info_lines_pass_where_vllms_do():
    vllm_logger = logging.getLogger("vllm")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    old_level = vllm_logger.level
    vllm_logger.addHandler(handler)
    try:
        vllm_logger.setLevel(logging.INFO)
        logging.getLogger("vllm_esp.integration.executor").info("ready")
        logging.getLogger("vllm_esp.integration.scheduler").debug("hidden at INFO")
        vllm_logger.setLevel(logging.WARNING)  # VLLM_LOGGING_LEVEL=WARNING silences both
        logging.getLogger("vllm_esp.integration.executor").info("silenced")
    finally:
        vllm_logger.removeHandler(handler)
        vllm_logger.setLevel(old_level)
    assert [r.getMessage() for r in records] == ["ready"]
