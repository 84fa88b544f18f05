"""taskstream: a distributed task platform on Kafka event logs."""

__version__ = "0.1.0"
