"""Chat template lookup for a checkpoint directory.

Owns where the Jinja chat template of a checkpoint comes from. Published Qwen3-VL checkpoints
carry it in one of three places (newest layout first): ``chat_template.jinja``,
``chat_template.json`` (``{"chat_template": "..."}``) or the ``chat_template`` key of
``tokenizer_config.json``. When none holds one, the Qwen3-VL Instruct template bundled next
to this module (byte-identical to the one the published checkpoints ship) is used.
"""

from __future__ import annotations

import json
from pathlib import Path

BUNDLED_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")


def bundled_chat_template() -> str:
    """The Qwen3-VL Instruct chat template shipped with this package."""
    return BUNDLED_TEMPLATE_PATH.read_text(encoding="utf-8")


def _pick(value: object) -> str | None:
    """A template from a ``chat_template`` value: a string, or a list of named templates."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list):
        # tokenizer_config.json may hold [{"name": "default", "template": ...}, ...].
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        chosen = named.get("default")
        if isinstance(chosen, str) and chosen.strip():
            return chosen
    return None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_chat_template(checkpoint_dir: str | Path) -> str | None:
    """The checkpoint's own chat template, or None when the directory has none."""
    root = Path(checkpoint_dir)
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        text = jinja.read_text(encoding="utf-8")
        if text.strip():
            return text
    for name in ("chat_template.json", "tokenizer_config.json"):
        data = _read_json(root / name)
        if data is not None and (template := _pick(data.get("chat_template"))) is not None:
            return template
    return None


def load_chat_template(checkpoint_dir: str | Path | None) -> str:
    """The checkpoint's chat template, falling back to the bundled Qwen3-VL template."""
    if checkpoint_dir is not None and (template := find_chat_template(checkpoint_dir)) is not None:
        return template
    return bundled_chat_template()
