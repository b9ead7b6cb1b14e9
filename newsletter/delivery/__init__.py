"""The delivery wing: the ledger, the send unit, its runners and the providers."""
