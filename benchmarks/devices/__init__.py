"""Runs on lent machines (the device tool): AMX Xeon, H200; GPU providers' placement and parity."""
