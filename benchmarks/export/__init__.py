"""What an export costs: time, peak memory and disk at real model shapes."""
