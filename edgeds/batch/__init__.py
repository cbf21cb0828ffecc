"""Offline batch jobs: JSONL in, JSONL out, resumable."""

from .job import JobOptions, run_job

__all__ = ["JobOptions", "run_job"]
