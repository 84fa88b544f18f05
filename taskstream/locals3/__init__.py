"""taskstream.locals3: a local S3-compatible server (S3Proxy) for tests and dev (D36).

S3Proxy (``org.gaul:s3proxy`` on Maven Central) with its filesystem backend,
resolved once with Maven like the Kafka jars and run with the same Java 17.
"""
