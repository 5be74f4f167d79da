"""Every dotted path vLLM resolves to a vllm-esp class, in one place (no imports).

vLLM takes executors, schedulers, workers, worker extensions and attention backends as dotted
paths (``distributed_executor_backend``, ``scheduler_cls``, ``worker_cls``,
``worker_extension_cls``, ``register_backend``); ``tests/test_qualnames.py`` resolves each.
"""

EXECUTOR = "vllm_esp.integration.executor.ESPExecutor"
SCHEDULER = "vllm_esp.integration.scheduler.ESPScheduler"
LENGTH_AWARE_SCHEDULER = "vllm_esp.scheduling.AliseScheduler"
STOCK_SCHEDULER = "vllm.v1.core.sched.scheduler.Scheduler"
WORKER_EXTENSION = "vllm_esp.integration.worker.ESPWorkerExtension"
CPU_WORKER = "vllm_esp.integration.esp_worker.ESPCPUWorker"
GPU_WORKER = "vllm_esp.integration.esp_gpu_worker.ESPGPUWorker"
CPU_ATTENTION_BACKEND = "vllm_esp.integration.esp_worker.ESPCPUAttentionBackend"
GPU_ATTENTION_BACKEND = "vllm_esp.integration.esp_gpu_worker.ESPFlashAttentionBackend"
GPU_FP32_ATTENTION_BACKEND = "vllm_esp.integration.esp_gpu_worker.ESPTritonAttentionBackend"

# --esp-policy -> the scheduler class run inside each instance
POLICY_SCHEDULERS = {"fcfs": STOCK_SCHEDULER, "sjf": LENGTH_AWARE_SCHEDULER,
                     "alise": LENGTH_AWARE_SCHEDULER}

ALL = {name: value for name, value in globals().items() if name.isupper() and
       isinstance(value, str)}
