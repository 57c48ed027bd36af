"""SMPP 3.4 PDUs, sans-I/O: framing of a byte stream and a codec on top of smpplib.

smpplib knows every field and TLV of the PDUs we need, and we use its tables and its
encoder. Its parser is not fit for bytes from the network, so parsing is ours:

- it reads past the end of a truncated body and finds "strings" without their NUL;
- it reads an integer TLV by the size it expects, not by the length on the wire, so a
  vendor's 2-octet ussd_service_op shifts every TLV after it;
- `DeliverSM` lacks `ussd_service_op`, so an inbound USSD deliver_sm raises KeyError
  (upstream issue #104); and unknown vendor TLVs are dropped (or fatal).

`decode()` never raises: a PDU it cannot read comes back as a `DecodeError` that says
which command_status the generic_nack should carry and which sequence_number it
answers, when the header was readable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from smpplib import command as sc
from smpplib import command_codes, consts
from smpplib.ptypes import flag, ostr

HEADER = struct.Struct(">IIII")
HEADER_LENGTH = HEADER.size
# The largest honest PDU is a submit_sm with a message_payload of a few KiB; a length
# far beyond that is a desynchronised stream or an attack on our memory, and the only
# safe answer is to drop the connection (we cannot find the next PDU boundary).
MAX_PDU_LENGTH = 64 * 1024
MAX_SEQUENCE = 0x7FFFFFFF
RESPONSE_BIT = 0x80000000

ESME_ROK = consts.SMPP_ESME_ROK
ESME_RINVMSGLEN = consts.SMPP_ESME_RINVMSGLEN
ESME_RINVCMDLEN = consts.SMPP_ESME_RINVCMDLEN
ESME_RINVCMDID = consts.SMPP_ESME_RINVCMDID
ESME_RINVBNDSTS = consts.SMPP_ESME_RINVBNDSTS
ESME_RALYBND = consts.SMPP_ESME_RALYBND
ESME_RSYSERR = consts.SMPP_ESME_RSYSERR
ESME_RBINDFAIL = consts.SMPP_ESME_RBINDFAIL
ESME_RINVPASWD = consts.SMPP_ESME_RINVPASWD
ESME_RINVSYSID = consts.SMPP_ESME_RINVSYSID
ESME_RMSGQFUL = consts.SMPP_ESME_RMSGQFUL
ESME_RTHROTTLED = consts.SMPP_ESME_RTHROTTLED
ESME_RINVSCHED = consts.SMPP_ESME_RINVSCHED
ESME_RX_T_APPN = consts.SMPP_ESME_RX_T_APPN
ESME_RINVOPTPARSTREAM = consts.SMPP_ESME_RINVOPTPARSTREAM
ESME_RINVPARLEN = consts.SMPP_ESME_RINVPARLEN
ESME_RUNKNOWNERR = consts.SMPP_ESME_RUNKNOWNERR

_TLV_TAGS: dict[str, int] = dict(consts.OPTIONAL_PARAMS)
_TLV_NAMES: dict[int, str] = {code: name for name, code in _TLV_TAGS.items()}
_COMMAND_NAMES: dict[int, str] = {code: name for name, code in command_codes.commands.items()}


def status_name(command_status: int) -> str:
    for name in dir(consts):
        if name.startswith("SMPP_ESME_") and getattr(consts, name) == command_status:
            return name[5:]
    return f"0x{command_status:08X}"


# -- framing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FramingError:
    """The stream cannot be cut into PDUs any more: fatal for the connection."""
    command_length: int
    sequence_number: int
    reason: str


class Framer:
    """Cuts a byte stream into whole PDUs. Feed it whatever the socket gave."""

    def __init__(self, max_length: int = MAX_PDU_LENGTH) -> None:
        self.max_length = max_length
        self.error: FramingError | None = None
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | FramingError]:
        """Complete PDUs in arrival order; a FramingError ends the list and the framer."""
        if self.error is not None:
            return []
        self._buf += data
        out: list[bytes | FramingError] = []
        # A bad length is judged only once the whole header is here, so that the
        # generic_nack can carry the sequence_number and so that the verdict does not
        # depend on how TCP happened to cut the bytes.
        while len(self._buf) >= HEADER_LENGTH:
            length, _, _, sequence = HEADER.unpack_from(self._buf)
            if length < HEADER_LENGTH or length > self.max_length:
                self.error = FramingError(length, sequence,
                                          f"command_length {length} outside "
                                          f"{HEADER_LENGTH}..{self.max_length}")
                self._buf.clear()
                out.append(self.error)
                break
            if len(self._buf) < length:
                break
            out.append(bytes(self._buf[:length]))
            del self._buf[:length]
        return out


# -- decoded PDUs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Pdu:
    """One PDU. `fields` holds mandatory fields and known TLVs by their SMPP names:
    C-octet strings as str (Latin-1, lossless), octet strings (short_message,
    message_payload) as bytes, integers as int. `unknown_tlvs` keeps what we have no
    name for, (tag, value) in wire order, so vendor extensions survive a round trip."""
    command: str
    sequence_number: int
    command_status: int = ESME_ROK
    fields: dict[str, Any] = field(default_factory=dict)
    unknown_tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def command_id(self) -> int:
        return command_codes.commands[self.command]

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def tlv(self, tag: int) -> bytes | None:
        for t, value in self.unknown_tlvs:
            if t == tag:
                return value
        return None

    def response(self, command_status: int = ESME_ROK, **fields: Any) -> Pdu:
        return Pdu(self.command + "_resp", self.sequence_number, command_status, fields)


@dataclass(frozen=True)
class DecodeError:
    """A PDU we could not read. Answer a request with generic_nack(command_status)."""
    command_status: int
    reason: str
    command_id: int | None = None
    sequence_number: int | None = None

    @property
    def is_response(self) -> bool:
        return self.command_id is not None and bool(self.command_id & RESPONSE_BIT)


class _Malformed(Exception):
    def __init__(self, command_status: int, reason: str) -> None:
        super().__init__(reason)
        self.command_status = command_status


class _Strict:
    """Parsing for bytes from the network, using smpplib's own field tables."""

    unknown_tlvs: tuple[tuple[int, bytes], ...] = ()

    def parse_params(self, data: bytes) -> None:
        pos, end = 0, len(data)
        request = not (command_codes.commands[self.command] & RESPONSE_BIT)
        for name in self.params_order:
            if self.field_is_optional(name):
                break
            if pos == end:
                # An error response may omit its body (3.4 §4.1.2); a request may not.
                if request:
                    raise _Malformed(ESME_RINVCMDLEN, f"body ends before {name}")
                break
            param = self.params[name]
            if param.type is int:
                if pos + param.size > end:
                    raise _Malformed(ESME_RINVCMDLEN, f"{name} truncated")
                setattr(self, name, int.from_bytes(data[pos:pos + param.size], "big"))
                pos += param.size
            elif param.type is str:
                nul = data.find(b"\0", pos)
                if nul < 0:
                    raise _Malformed(ESME_RINVCMDLEN, f"{name} has no NUL terminator")
                setattr(self, name, data[pos:nul])
                pos = nul + 1
            elif param.type is ostr:
                length = getattr(self, param.len_field) or 0
                if pos + length > end:
                    raise _Malformed(ESME_RINVMSGLEN, f"{name} shorter than its length")
                setattr(self, name, data[pos:pos + length])
                pos += length
        self.parse_optional_params(data[pos:])

    def parse_optional_params(self, data: bytes) -> None:
        pos, end = 0, len(data)
        unknown: list[tuple[int, bytes]] = []
        while pos < end:
            if pos + 4 > end:
                raise _Malformed(ESME_RINVOPTPARSTREAM, "truncated TLV header")
            tag, length = struct.unpack_from(">HH", data, pos)
            pos += 4
            if pos + length > end:
                raise _Malformed(ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04X} longer than the body")
            value = bytes(data[pos:pos + length])
            pos += length
            name = _TLV_NAMES.get(tag)
            param = self.params.get(name) if name else None
            if param is None:
                unknown.append((tag, value))
            elif param.type is int:
                # By the length on the wire: vendors send 1-octet fields as 2 or 4.
                if not 1 <= length <= 4:
                    raise _Malformed(ESME_RINVPARLEN, f"{name} has length {length}")
                setattr(self, name, int.from_bytes(value, "big"))
            elif param.type is str:
                setattr(self, name, value.split(b"\0", 1)[0])
            elif param.type is flag:
                setattr(self, name, True)
            else:
                setattr(self, name, value)
        self.unknown_tlvs = tuple(unknown)


def _with_ussd_service_op(cls: type) -> type:
    """deliver_sm and data_sm carry USSD from the gateway; smpplib only knows it on
    submit_sm."""
    return type(cls.__name__, (cls,), {
        "params": {**cls.params, "ussd_service_op": sc.Param(type=int, size=1)},
        "params_order": tuple(cls.params_order) + ("ussd_service_op",),
    })


_BASE_CLASSES: dict[str, type] = {
    "bind_transmitter": sc.BindTransmitter, "bind_transmitter_resp": sc.BindTransmitterResp,
    "bind_receiver": sc.BindReceiver, "bind_receiver_resp": sc.BindReceiverResp,
    "bind_transceiver": sc.BindTransceiver, "bind_transceiver_resp": sc.BindTransceiverResp,
    "submit_sm": sc.SubmitSM, "submit_sm_resp": sc.SubmitSMResp,
    "deliver_sm": _with_ussd_service_op(sc.DeliverSM), "deliver_sm_resp": sc.DeliverSMResp,
    "data_sm": _with_ussd_service_op(sc.DataSM), "data_sm_resp": sc.DataSMResp,
    "query_sm": sc.QuerySM, "query_sm_resp": sc.QuerySMResp,
    "unbind": sc.Unbind, "unbind_resp": sc.UnbindResp,
    "enquire_link": sc.EnquireLink, "enquire_link_resp": sc.EnquireLinkResp,
    "generic_nack": sc.GenericNAck, "alert_notification": sc.AlertNotification,
}
_CLASSES: dict[str, type] = {
    name: type(cls.__name__, (_Strict, cls), {}) for name, cls in _BASE_CLASSES.items()}


class _NoSequence:
    """smpplib asks its 'client' for a sequence number while building; ours is set after."""
    sequence = 0

    def next_sequence(self) -> int:
        return 0


_NO_SEQUENCE = _NoSequence()


def decode(data: bytes) -> Pdu | DecodeError:
    """One whole PDU (as the Framer cut it) -> Pdu, or DecodeError. Never raises."""
    data = bytes(data)
    if len(data) < HEADER_LENGTH:
        return DecodeError(ESME_RINVCMDLEN, f"{len(data)} octets is shorter than a header")
    length, command_id, command_status, sequence = HEADER.unpack_from(data)
    if length != len(data):
        return DecodeError(ESME_RINVCMDLEN, f"command_length {length} but {len(data)} octets",
                           command_id, sequence)
    name = _COMMAND_NAMES.get(command_id)
    cls = _CLASSES.get(name) if name else None
    if cls is None:
        return DecodeError(ESME_RINVCMDID, f"command_id 0x{command_id:08X} not supported",
                           command_id, sequence)
    try:
        obj = cls(name, client=_NO_SEQUENCE)
        obj.parse_params(data[HEADER_LENGTH:])
    except _Malformed as e:
        return DecodeError(e.command_status, f"{name}: {e}", command_id, sequence)
    except Exception as e:  # noqa: BLE001 - a parser bug must cost one PDU, never the connection
        return DecodeError(ESME_RSYSERR, f"{name}: {type(e).__name__}: {e}", command_id, sequence)
    fields: dict[str, Any] = {}
    for fname in obj.params_order:
        value = getattr(obj, fname, None)
        if value is None or fname == "sm_length":
            continue
        if obj.params[fname].type is str and isinstance(value, bytes):
            value = value.decode("latin-1")
        fields[fname] = value
    return Pdu(name, sequence, command_status, fields, obj.unknown_tlvs)


def encode(pdu: Pdu) -> bytes:
    """Pdu -> bytes, through smpplib's encoder; unknown_tlvs are appended as they are.
    Raises ValueError for a command or field smpplib does not know (a bug of ours)."""
    cls = _CLASSES.get(pdu.command)
    if cls is None:
        raise ValueError(f"cannot encode {pdu.command!r}")
    fields: dict[str, Any] = {}
    for name, value in pdu.fields.items():
        param = cls.params.get(name)
        if param is None:
            raise ValueError(f"{pdu.command} has no field {name!r}")
        if param.type is str and isinstance(value, bytes):
            value = value.decode("latin-1")  # smpplib encodes mandatory strings as Latin-1
        fields[name] = value
    obj = cls(pdu.command, client=_NO_SEQUENCE, **fields)
    obj.sequence = pdu.sequence_number
    obj.status = pdu.command_status
    raw = obj.generate()
    extra = b"".join(struct.pack(">HH", tag, len(v)) + v for tag, v in pdu.unknown_tlvs)
    raw = raw + extra
    return struct.pack(">I", len(raw)) + raw[4:]


def generic_nack(command_status: int, sequence_number: int | None) -> bytes:
    return encode(Pdu("generic_nack", sequence_number or 0, command_status))
