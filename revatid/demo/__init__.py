"""Embedded workloads for `revatictl demo` (no GPU, no download)."""
