"""Test harness: real brokers on free ports, the platform as processes, polling helpers."""
