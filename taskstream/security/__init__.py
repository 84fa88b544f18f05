"""Keys and what is done with them: keyrings, event signatures, payload sealing (D26, D27).

Pure (no Kafka, no I/O beyond reading a keyring file): the fold verifies
signatures with :mod:`~taskstream.security.signing` (stdlib ``hmac`` only), the
SDK, the workers, the API and the CLI seal and open payloads with
:mod:`~taskstream.security.sealing` (AES-256-GCM from ``cryptography``).
docs/security.md says who holds which key and what each can and cannot do.
"""
