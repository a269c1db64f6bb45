"""ECHO master: the REST API, dataflow specs and desired state, and the reconcile loop."""
