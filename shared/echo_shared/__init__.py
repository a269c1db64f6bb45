"""ECHO shared library: domain models, bus messages, names, settings and clients.

Everything the services have in common lives here; services never import each other.
Importing this package has no side effects.
"""

__version__ = "0.1.0"
