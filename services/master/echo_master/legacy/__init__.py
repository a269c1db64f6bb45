"""The original ECHO submission API (``/DAG``) and DAG format, mapped onto ECHO dataflows."""
