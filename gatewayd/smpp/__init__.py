"""SMPP 3.4 ESME: the short code's SMS and the *383# USSD dialogs over an SMSC bind.

Sans-I/O cores (no trio, no clock, no sockets; every time is an explicit `now`):

- `pdu`       framing (`Framer`) and the codec on top of smpplib (`decode`, `encode`)
- `session`   one connection's state machine (`EsmeSession`), retry policy, `Backoff`
- `sender`    which submit_sm goes when: rate, slow-down, retries, expiry (`Sender`)
- `sms`       GSM-7 / UCS-2, splitting with UDH or message_payload, UDH parsing
- `receipts`  delivery receipts and the message id rule (`ReceiptMatcher`)
- `mo`        inbound parts and their reassembly (`Reassembler`)
- `ussd`      deliver_sm <-> dialog hop, vendor `Profile`s

`client.Esme` is the thin trio shell that keeps a bind up and moves bytes.
"""
