"""ECHO migrator: migrations, failover and rebalancing as persisted sagas.

This release runs the service skeleton: it follows device events durably (a JetStream
consumer, so nothing is missed across restarts) and records them; the move protocol
arrives with live migration.
"""
