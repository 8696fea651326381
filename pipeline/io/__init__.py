"""The I/O layer every stage writes and reads through.

- ``schemas``: the pyarrow schema of every table, defined once.
- ``ids``: content hashes (``prompt_id``, ``completion_id``) and stable shard buckets.
- ``atomic`` / ``shards``: files and Parquet shards written under a temporary name, then renamed.
- ``layout``: the paths of an output folder: Parquet shards on top, manifest, run identity and reports
  in ``.prefpool/`` (``datasets`` skips hidden folders), and the layout before it.
- ``manifest`` / ``read``: ``manifest.json`` per output folder, and reads checked against it.
- ``stage_run``: resumable, shardable runs (work units, ``--shard i/N``, overwrite rules).
- ``provenance``: what made a file (versions, git revision, seed, model).
- ``completions``: the (prompt, completion) pairs of an ``examples`` or ``candidates`` table.
- ``progress``: progress bars and the one-line summary every stage prints.
- ``errors``: the exceptions a stage raises for problems the user can fix.
"""
