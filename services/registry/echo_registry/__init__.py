"""ECHO registry: device registration, heartbeats, liveness and the device directory."""
