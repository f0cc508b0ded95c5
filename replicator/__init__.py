"""replicator: two-way PostgreSQL logical replication with in-process masking.

One daemon, no broker: pgoutput slots on each source, masking in-process,
batched set-based apply on the target, progress committed with the data.
"""

__version__ = "0.1.0"
