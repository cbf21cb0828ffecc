"""The context a run has: which number is in force and where it comes from, and how an over-long
prompt is cut to fit it.

The artifact's `context_length` (what its rotary tables were exported for) is the limit; the
profile's `[runtime] context` is only the default when the caller gives none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

# Of the prompt tokens kept by truncation, this share comes from the prompt's opening: BOS, the
# system prompt and the template's first turn markers; the rest is its end (the question and the
# assistant tag, which the answer follows).
OPENING_SHARE = 0.25


@dataclass(frozen=True)
class ContextChoice:
    tokens: int
    source: str  # why this number: the caller's, the profile's, or the artifact's limit

    def describe(self) -> str:
        return f"context {self.tokens} ({self.source})"


def choose_context(requested: int | None, profile_name: str, profile_context: int,
                   artifact_context: int) -> ContextChoice:
    """The caller's context if given (1 .. the artifact's), else the profile's default, lowered
    to the artifact's where the artifact was exported for less."""
    if requested:
        if type(requested) is not int or not 1 < requested <= artifact_context:
            raise ConfigError(f"context {requested!r}: this artifact was exported for 2 to "
                              f"{artifact_context} tokens (re-export with a larger --context "
                              "for more)")
        return ContextChoice(requested, "--context / context= given")
    if profile_context <= artifact_context:
        return ContextChoice(profile_context, f"profile {profile_name}'s default; the artifact "
                                              f"allows up to {artifact_context} (--context)")
    return ContextChoice(artifact_context, f"the artifact's limit, below profile {profile_name}'s "
                                           f"default of {profile_context}")


def truncate_prompt(ids: np.ndarray, context: int, max_new_tokens: int) -> np.ndarray:
    """An over-long prompt cut to leave room for `max_new_tokens` (but keeping at least half the
    context): its opening and its end, the middle dropped. Unchanged if it already fits."""
    keep = min(max(context - max_new_tokens, context // 2), context - 1)
    if len(ids) <= keep:
        return ids
    head = max(int(keep * OPENING_SHARE), 1)
    return np.ascontiguousarray(np.concatenate([ids[:head], ids[len(ids) - (keep - head):]]))
