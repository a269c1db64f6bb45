"""Run ECHO on one machine: brokers, the five services and a fleet of agents as processes.

Used by ``echoctl dev up`` and by the test harness, so both start the platform the same way.
"""

from .brokers import Brokers, BrokerSetupError, start_brokers
from .processes import ManagedProcess, free_port, wait_for_port

__all__ = ["BrokerSetupError", "Brokers", "ManagedProcess", "free_port", "start_brokers", "wait_for_port"]
