"""The web console at ``/ui/``: pages and assets (``pages``), sessions (``sessions``) and the
live feed (``live``). It is a client of the REST API like ``echoctl``: its pages call
``/api/v1/...`` with the session cookie instead of a bearer token."""
