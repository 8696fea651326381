"""Batch stages that turn preference data into Parquet training tables.

Every stage reads and writes through the same small I/O layer:

- ``schemas``: the pyarrow schema of every table, defined once.
- ``shards`` / ``atomic``: Parquet shards written under a temporary name, then renamed.
- ``layout``: where an output folder keeps its files (shards on top, ``.prefpool/`` for the rest), so
  ``datasets.load_dataset(folder)`` loads it as it is.
- ``manifest`` / ``read``: ``manifest.json`` per output folder, and checked reads.
- ``stage``: resumable, shardable runs (work units, ``--shard i/N``, overwrite rules).
- ``merge``: combines ``--shard i/N`` runs into one folder equal to an unsharded run.

The first stage is ``ingest`` (``prefpool.pipeline.ingest.ingest``).
"""
