"""The planner must import with torch, vllm and numpy unavailable (it runs in the simulator)."""

import subprocess
import sys

CODE = """
import sys
for name in ("torch", "vllm", "numpy"):
    sys.modules[name] = None  # any import of them now raises ImportError
import vllm_esp.planner
import vllm_esp.planner.manager, vllm_esp.planner.policies, vllm_esp.planner.validate
from vllm_esp.planner.cost_model import load_builtin, builtin_profiles
for name in builtin_profiles():
    load_builtin(name)
loaded = [m for m in ("torch", "vllm", "numpy") if sys.modules.get(m) is not None]
assert not loaded, loaded
print("ok")
"""


def test_planner_imports_without_torch_vllm_numpy():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
