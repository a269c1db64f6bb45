"""echoctl: the ECHO command-line client and the local development stack."""
