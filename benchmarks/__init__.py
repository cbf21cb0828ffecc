"""Benchmarks, grouped by the question each answers (README.md here is the index).

Run from the repository root as modules, against the installed project:
    python -m benchmarks.quality.perplexity
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent  # the checkout: peers' environments import benchmarks and edgeds from it
RESULTS = HERE / "results"  # what every benchmark writes, and what the README cites
REFERENCE_MODELS = HERE / "reference_models"  # the shipped tiny models (train.py made them)
# Published configs and tokenizers of the real models, outside the repository (../shared).
SHARED_REFERENCE = HERE.parent.parent / "shared/reference"
