"""GSM modems: the python-gsmmodem-new bridge, pool, SMS in/out, health and reset.

Nothing here yet: SMS written to the outbox wait for this package or the SMPP channel.
"""
