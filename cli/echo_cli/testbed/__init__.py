"""The emulated testbed (``echoctl testbed up``, ``make testbed``): an edge/fog/cloud fleet
on one machine, edge devices behind emulated latency and bandwidth to the cloud.

- ``fleet.py``: the devices and their network paths (default fleet, YAML override);
- ``network.py``: bridge, network namespaces, veth pairs, ``tc tbf``; teardown and sweep;
- ``delay_proxy.py``: the user-space TCP delay proxy (latency without ``netem``);
- ``runner.py``: ``Testbed`` = network + proxy + services + agents, started and stopped;
- ``up.py``: the foreground command.

Import from the modules: the delay proxy runs as ``python -m echo_cli.testbed.delay_proxy``
and should not load the rest.
"""
