"""Data the package ships with (declared as package data, so a wheel install has it too).

``DEMO_MODEL_DIR``: the bundled demo checkpoint, what ``epd up`` and the services serve when no
``--model`` is given: a tiny Qwen3-VL-MoE trained on synthetic pictures of coloured shapes (model
card: ``demo/README.md``). Served under the model id ``demo``.
"""

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().with_name("demo")
