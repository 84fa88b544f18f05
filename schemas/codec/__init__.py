"""taskstream.schemas.codec: the Avro byte-level codec, compiled for the newest schema (D12)."""
