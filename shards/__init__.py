"""Audio I/O and the shard format: writer, reader, manifest, validation, stats and release."""

from .format import SCHEMA_VERSION, make_key
from .writer import ShardSetWriter, ShardWriter

__all__ = ["SCHEMA_VERSION", "ShardSetWriter", "ShardWriter", "make_key"]
