"""ECHO scheduler: validates dataflow DAGs and places their tasks on devices.

The core (``validating``, ``placing``) is pure: ``(spec, devices) -> placement``, no I/O.
``app`` serves it over NATS request/reply in a queue group, so replicas scale out.
"""
