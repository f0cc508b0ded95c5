"""The replication protocol: CopyBoth framing and pgoutput messages. Pure code, no I/O."""
