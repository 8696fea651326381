"""prefpool: offline preference optimization with cached candidate pools.

The distribution holds three parts, each its own subpackage:

- ``prefpool.losses``: pure loss functions of per-sequence log-prob tensors (torch only).
- ``prefpool.pipeline``: batch stages that turn preference data into Parquet training tables.
- ``prefpool.train``: a trainer that reads those tables and holds no reference model.
"""

__version__ = "0.1.0"
