"""edgeds: DeepSeek models offline on CPUs and edge devices.

The runtime imports no torch, optimum or transformers; `export` (the exporter) is separate.
"""

from .engine import Completion, Engine, load

__version__ = "0.1.0"
__all__ = ["load", "Engine", "Completion", "__version__"]
