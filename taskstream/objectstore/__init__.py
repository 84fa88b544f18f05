"""taskstream.objectstore: large payloads and results in S3-compatible storage (D34).

``keys`` names objects, ``store`` reads and writes them (boto3, sha256 checked on
every read), ``offload`` decides what goes there and the reaper (``reaper``)
deletes what no task references any more.
"""
