"""Helpers of the ETL operators (``echo_agent.operators.etl_ops``): SenML, schema files,
the Bloom filter, files on the device, typed errors."""
