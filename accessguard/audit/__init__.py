"""The audit trail: events, the hash chain, sinks, the spool and the access ledger."""
