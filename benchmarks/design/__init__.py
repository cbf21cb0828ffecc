"""Whether a design choice pays: graph variants, parts, caches, expert dispatch, batching."""
