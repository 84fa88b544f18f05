"""taskstream.localkafka: a real Apache Kafka on this machine without Docker (D2)."""
