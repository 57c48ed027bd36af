"""Upstream replication and the M-PESA action executor.

The change log this package will ship is already written by every transaction
(store.changelog), and M-PESA actions already wait in store.outbox; until this package
delivers them, an operator settles actions by hand (`gatewayd mpesa resolve`).
"""
