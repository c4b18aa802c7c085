"""Measurement: quality against the baseline, speed on this hardware, and the system fingerprint."""
