"""Worker processes named after their ESP instance (``Worker_ESP1``) in log prefixes and titles.

Each ESP instance is a stock ``MultiprocExecutor``, whose workers vLLM names by rank only
(``VllmWorker-0`` at spawn, then ``Worker`` or ``Worker_TP1`` once the model-parallel groups
exist), so the workers of two instances cannot be told apart in the log. The ESP executor
starts instance i with ``VLLM_ESP_INSTANCE=i`` in the environment, which its worker processes
inherit; this patch inserts ``_ESP<i>`` into both names (``VllmWorker_ESP1-0``,
``Worker_ESP1_TP1``, process title ``VLLM::Worker_ESP1``). Without the variable (stock vLLM,
a one-instance ESP engine) every name is unchanged.
"""

from __future__ import annotations

import os

from vllm_esp_patches._patching import Patch

ENV = "VLLM_ESP_INSTANCE"  # set by the ESP executor while it starts an instance


def with_instance(name: str | None, instance: str | None = None) -> str | None:
    """``Worker_TP1`` -> ``Worker_ESP<i>_TP1`` (and ``VllmWorker-0`` -> ``VllmWorker_ESP<i>-0``)
    when this process belongs to ESP instance i; other names are returned as they are."""
    instance = os.environ.get(ENV) if instance is None else instance
    if not instance or not name or "_ESP" in name:
        return name
    for stem in ("VllmWorker", "Worker"):
        if name.startswith(stem):
            return f"{stem}_ESP{instance}{name[len(stem):]}"
    return name


class _NamingContext:
    """A multiprocessing context whose ``Process(name=...)`` carries the instance."""

    def __init__(self, context):
        self._context = context

    def Process(self, *args, name=None, **kwargs):  # noqa: N802 - multiprocessing's API
        return self._context.Process(*args, name=with_instance(name), **kwargs)

    def __getattr__(self, attr):
        return getattr(self._context, attr)


def _install(module) -> None:
    names = ("get_mp_context", "set_process_title", "decorate_logs")
    missing = [n for n in names if not callable(getattr(module, n, None))]
    if missing:
        raise TypeError(f"vllm.v1.executor.multiproc_executor no longer uses {missing}; "
                        "the ESP worker-names patch needs review")
    get_mp_context, set_process_title, decorate_logs = (getattr(module, n) for n in names)

    def named_get_mp_context():
        context = get_mp_context()
        return _NamingContext(context) if os.environ.get(ENV) else context

    def named_set_process_title(name, *args, **kwargs):
        return set_process_title(with_instance(name), *args, **kwargs)

    def named_decorate_logs(process_name=None, *args, **kwargs):
        return decorate_logs(with_instance(process_name), *args, **kwargs)

    module.get_mp_context = named_get_mp_context
    module.set_process_title = named_set_process_title
    module.decorate_logs = named_decorate_logs


PATCH = Patch(
    name="worker_names",
    target="vllm.v1.executor.multiproc_executor",
    install=_install,
    why="ESP: each worker's log prefix and process title name its instance (Worker_ESP1)",
)
