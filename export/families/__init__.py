"""One module per Hugging Face model_type; dispatch is this dict, nothing clever."""

from __future__ import annotations

from types import ModuleType

from ..errors import ExportError
from . import deepseek_v2, deepseek_v3, llama, qwen2

FAMILIES: dict[str, ModuleType] = {
    "llama": llama, "qwen2": qwen2, "deepseek_v2": deepseek_v2, "deepseek_v3": deepseek_v3,
}


def family_for(config: dict) -> ModuleType:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ExportError(
            f"model_type '{model_type}' is not supported; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]
