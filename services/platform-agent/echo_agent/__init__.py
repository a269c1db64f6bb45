"""ECHO platform agent: runs on every device, executes control commands, runs tasks."""
