#!/usr/bin/env node
// An SMSC for gatewayd's SMPP tests, built on node-smpp's server: a protocol
// implementation this team did not write, so our ESME is checked against someone
// else's reading of SMPP 3.4, not against our own.
//
// Usage: node smsc.js [--port N] [--system-id ID] [--password PW]
//          [--receipts none|one|dup|out-of-order|decimal|upper-zeros|text-only[,...]]
//          [--throttle K] [--queue-full K] [--reject DEST=STATUS] [--first-id HEX]
//          [--crash-after N] [--quiet]
//
// --port 0 (the default, or $SMSC_PORT) lets the OS choose; the first line printed,
// {"event":"listening","port":N}, tells which. Every PDU received is printed as one JSON
// line ({"event":"recv",...}), every PDU we send on command as {"event":"sent",...}.
// Octet strings are printed as hex, and `raw` is the whole PDU as received. Every line
// carries `t`, a monotonic time in milliseconds (for latency figures).
//
// --quiet: no line per PDU (for benchmarks: printing costs the SMSC more than SMPP
// does); {"cmd":"stats"} then tells how many submit_sm came and when.
//
// --crash-after N: right after answering the N-th accepted submit_sm (and printing
// that), the process kills itself with SIGKILL: no unbind, connections reset, PDUs
// already read but not yet handled are never answered. It dies at a PDU boundary so
// that a test can count exactly what this SMSC took responsibility for.
//
// Commands, one JSON object per line on stdin, sent to the newest bound receiver:
//   {"cmd":"mo","source":"2547..","dest":"383","text":"..","parts":3,"order":"reverse",
//    "dup":[2],"ref":42,"scheme":"udh8|udh16|sar","coding":"gsm|ucs2","only":[1]}
//   {"cmd":"ussd","source":"2547..","dest":"383","text":"*383#","op":1,"session":4608,
//    "service_type":"USSD"}                       (session: its_session_info, or null)
//   {"cmd":"receipt","id":"1a2b","stat":"DELIVRD","state":2,"source":"2547..","dest":"383",
//    "text_only":false}                          one delivery receipt, as we say
//   {"cmd":"raw","hex":"..."}                     arbitrary bytes on the socket
//   {"cmd":"enquire_link"} {"cmd":"unbind"} {"cmd":"close"} {"cmd":"ping","id":..}
//   {"cmd":"mute"}                                stop answering enquire_link
'use strict';

const smpp = require('smpp');
const readline = require('readline');

function parseArgs(argv) {
  const opts = {
    port: Number(process.env.SMSC_PORT || 0), systemId: 'gatewayd', password: 'secret',
    receipts: ['one'], throttle: 0, queueFull: 0, reject: {}, firstId: 0x1a2b3c00,
    crashAfter: 0, quiet: false,
  };
  if (argv.includes('--quiet')) {
    opts.quiet = true;
    argv = argv.filter((a) => a !== '--quiet');
  }
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (key === '--port') opts.port = Number(value);
    else if (key === '--system-id') opts.systemId = value;
    else if (key === '--password') opts.password = value;
    else if (key === '--receipts') opts.receipts = value.split(',');
    else if (key === '--throttle') opts.throttle = Number(value);
    else if (key === '--queue-full') opts.queueFull = Number(value);
    else if (key === '--first-id') opts.firstId = parseInt(value, 16);
    else if (key === '--crash-after') opts.crashAfter = Number(value);
    else if (key === '--reject') {
      const [dest, status] = value.split('=');
      opts.reject[dest] = Number(status);
    } else throw new Error('unknown argument ' + key);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const receiptModes = new Set(opts.receipts);

const started = process.hrtime.bigint();

const PER_PDU = new Set(['recv', 'sent', 'submit_sm_resp']);
const stats = { submits: 0, accepted: 0, first_submit_t: null, last_resp_t: null };

function now() {
  return Number(process.hrtime.bigint() - started) / 1e6;
}

function emit(obj) {
  if (opts.quiet && PER_PDU.has(obj.event)) return;
  obj.t = Number(process.hrtime.bigint() - started) / 1e6;
  process.stdout.write(JSON.stringify(obj, (k, v) => {
    if (v && v.type === 'Buffer' && Array.isArray(v.data)) return Buffer.from(v.data).toString('hex');
    if (v instanceof Date) return v.toISOString();
    return v;
  }) + '\n');
}

// node-smpp decodes short_message into text by its own tables; keep the octets too, so
// that a test can check both what we sent and how another implementation read it.
const fromBuffer = smpp.PDU.prototype.fromBuffer;
smpp.PDU.prototype.fromBuffer = function (buffer) {
  Object.defineProperty(this, 'raw', { value: Buffer.from(buffer), enumerable: false });
  return fromBuffer.call(this, buffer);
};

function describe(pdu, event) {
  const out = { event, command: pdu.command, seq: pdu.sequence_number, status: pdu.command_status };
  for (const key of Object.keys(pdu)) {
    if (['command', 'command_length', 'command_id', 'command_status', 'sequence_number'].includes(key)) continue;
    const value = pdu[key];
    if (value && typeof value === 'object' && 'message' in value && !Buffer.isBuffer(value)) {
      out[key] = value.message;            // node-smpp's decoding of the text
      if (value.udh) out[key + '_udh'] = value.udh.map((b) => b.toString('hex'));
    } else {
      out[key] = value;
    }
  }
  if (pdu.raw) out.raw = pdu.raw.toString('hex');
  return out;
}

const bound = [];   // sessions that may receive deliver_sm, newest last
let submits = 0;
let accepted = 0;
let nextId = opts.firstId;

function receipts(id, submit) {
  if (receiptModes.has('none')) return [];
  let rid = id;
  if (receiptModes.has('decimal')) rid = String(parseInt(id, 16));
  if (receiptModes.has('upper-zeros')) rid = '000' + id.toUpperCase();
  const make = (stat, state) => {
    const text = `id:${rid} sub:001 dlvrd:${stat === 'DELIVRD' ? '001' : '000'} ` +
      `submit date:2401011200 done date:2401011201 stat:${stat} err:000 text:hello`;
    const pdu = {
      source_addr: submit.destination_addr, destination_addr: submit.source_addr,
      esm_class: 0x04, short_message: Buffer.from(text, 'ascii'),
    };
    if (!receiptModes.has('text-only')) {
      pdu.receipted_message_id = rid;
      pdu.message_state = state;
    }
    return pdu;
  };
  let list = [make('DELIVRD', 2)];
  if (receiptModes.has('out-of-order')) list = [make('DELIVRD', 2), make('ENROUTE', 1)];
  if (receiptModes.has('dup')) list.push(make('DELIVRD', 2));
  return list;
}

function sendDeliver(session, fields, note) {
  const pdu = new smpp.PDU('deliver_sm', fields);
  session.send(pdu, null, (sent) => emit(Object.assign(describe(sent, 'sent'), note || {})));
}

function onSubmit(session, pdu) {
  submits += 1;
  stats.submits += 1;
  if (stats.first_submit_t === null) stats.first_submit_t = now();
  let status = 0;
  if (submits <= opts.throttle) status = smpp.ESME_RTHROTTLED;
  else if (submits <= opts.throttle + opts.queueFull) status = smpp.ESME_RMSGQFUL;
  else if (pdu.destination_addr in opts.reject) status = opts.reject[pdu.destination_addr];
  if (status) {
    session.send(pdu.response({ command_status: status }));
    emit({ event: 'submit_sm_resp', seq: pdu.sequence_number, status });
    return;
  }
  const id = (nextId++).toString(16);
  // Printed as soon as the response is handed to the socket (node writes at once when
  // nothing is queued), so that a crash right after leaves an exact record.
  session.send(pdu.response({ message_id: id }), null, () => {
    if (pdu.registered_delivery & 1) {
      // A transmitter bind cannot take deliver_sm: its receipts go to a receiver bind.
      const to = bound.includes(session) ? session : bound[bound.length - 1];
      if (!to) return;
      for (const r of receipts(id, pdu)) sendDeliver(to, r, { receipt_for: id });
    }
  });
  emit({ event: 'submit_sm_resp', seq: pdu.sequence_number, status: 0, message_id: id });
  accepted += 1;
  stats.accepted += 1;
  stats.last_resp_t = now();
  if (opts.crashAfter && accepted >= opts.crashAfter) {
    emit({ event: 'crashing', accepted });
    process.kill(process.pid, 'SIGKILL');
  }
}

function receiptPdu(cmd) {
  const text = `id:${cmd.id} sub:001 dlvrd:000 submit date:2401011200 done date:2401011201 ` +
    `stat:${cmd.stat || 'DELIVRD'} err:${cmd.err || '000'} text:`;
  const pdu = {
    source_addr: cmd.source, destination_addr: cmd.dest, esm_class: 0x04,
    short_message: Buffer.from(text, 'ascii'),
  };
  if (!cmd.text_only) {
    pdu.receipted_message_id = cmd.id;
    pdu.message_state = cmd.state === undefined ? 2 : cmd.state;
  }
  return pdu;
}

const server = smpp.createServer((session) => {
  // No Nagle: a small PDU must not wait for the ACK of the previous one (with the
  // peer's delayed ACK that costs 40 ms a PDU, which is no SMSC's behaviour to copy).
  session.socket.setNoDelay(true);
  session.on('error', (e) => emit({ event: 'error', message: e.message }));
  session.on('pdu', (pdu) => emit(describe(pdu, 'recv')));
  for (const bind of ['bind_transceiver', 'bind_transmitter', 'bind_receiver']) {
    session.on(bind, (pdu) => {
      let status = 0;
      if (pdu.system_id !== opts.systemId) status = smpp.ESME_RINVSYSID;
      else if (pdu.password !== opts.password) status = smpp.ESME_RINVPASWD;
      session.send(pdu.response({ command_status: status, system_id: 'nodesmsc' }));
      emit({ event: 'bind', command: bind, status });
      if (!status && bind !== 'bind_transmitter') bound.push(session);
    });
  }
  session.on('enquire_link', (pdu) => {
    if (!session.muted) session.send(pdu.response());
  });
  session.on('unbind', (pdu) => {
    session.send(pdu.response(), null, () => session.close());
  });
  session.on('submit_sm', (pdu) => onSubmit(session, pdu));
  session.on('close', () => {
    const i = bound.indexOf(session);
    if (i >= 0) bound.splice(i, 1);
    emit({ event: 'closed' });
  });
});

function gsmSeptets(text) {
  return smpp.gsmCoder.encode(text, 0);
}

function moPdus(cmd) {
  const coding = cmd.coding || 'gsm';
  const octets = coding === 'gsm' ? gsmSeptets(cmd.text) : Buffer.from(
    smpp.encodings.UCS2.encode(cmd.text));
  const dataCoding = coding === 'gsm' ? 0 : 8;
  const base = { source_addr: cmd.source, destination_addr: cmd.dest, data_coding: dataCoding };
  const total = cmd.parts || 1;
  if (total === 1) return [Object.assign({}, base, { short_message: octets })];
  // Cut by octets, as a careless phone would: an escape or a surrogate pair may be
  // split across two parts, and the receiver must still read the text.
  const size = Math.ceil(octets.length / total);
  const ref = cmd.ref === undefined ? 42 : cmd.ref;
  const scheme = cmd.scheme || 'udh8';
  const out = [];
  for (let i = 0; i < total; i++) {
    const chunk = octets.slice(i * size, (i + 1) * size);
    if (scheme === 'sar') {
      out.push(Object.assign({}, base, {
        short_message: chunk, sar_msg_ref_num: ref, sar_total_segments: total, sar_segment_seqnum: i + 1,
      }));
      continue;
    }
    const udh = scheme === 'udh16'
      ? Buffer.from([0x06, 0x08, 0x04, ref >> 8, ref & 0xff, total, i + 1])
      : Buffer.from([0x05, 0x00, 0x03, ref & 0xff, total, i + 1]);
    out.push(Object.assign({}, base, { esm_class: 0x40, short_message: Buffer.concat([udh, chunk]) }));
  }
  if (cmd.order === 'reverse') out.reverse();
  if (cmd.only) return out.filter((p) => cmd.only.includes(partSeq(p)));
  for (const seq of cmd.dup || []) out.push(out.find((p) => partSeq(p) === seq));
  return out;
}

function partSeq(p) {
  if (p.sar_segment_seqnum) return p.sar_segment_seqnum;
  return p.short_message[p.short_message[0]];
}

function onCommand(line) {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  const session = bound[bound.length - 1];
  if (cmd.cmd === 'ping') return emit({ event: 'pong', id: cmd.id });
  if (cmd.cmd === 'stats') return emit(Object.assign({ event: 'stats' }, stats));
  if (!session) return emit({ event: 'no_session', cmd: cmd.cmd });
  if (cmd.cmd === 'mo') {
    for (const fields of moPdus(cmd)) sendDeliver(session, fields);
  } else if (cmd.cmd === 'ussd') {
    const fields = {
      service_type: cmd.service_type === undefined ? 'USSD' : cmd.service_type,
      source_addr: cmd.source, destination_addr: cmd.dest, data_coding: 0,
      short_message: gsmSeptets(cmd.text), ussd_service_op: cmd.op,
    };
    if (cmd.session !== null && cmd.session !== undefined) {
      fields.its_session_info = Buffer.from([cmd.session >> 8, cmd.session & 0xff]);
    }
    sendDeliver(session, fields);
  } else if (cmd.cmd === 'receipt') {
    sendDeliver(session, receiptPdu(cmd), { receipt_for: cmd.id });
  } else if (cmd.cmd === 'raw') {
    session.socket.write(Buffer.from(cmd.hex, 'hex'), () => emit({ event: 'sent_raw', hex: cmd.hex }));
  } else if (cmd.cmd === 'enquire_link') {
    session.enquire_link({}, null, (sent) => emit(describe(sent, 'sent')));
  } else if (cmd.cmd === 'unbind') {
    session.unbind({}, null, (sent) => emit(describe(sent, 'sent')));
  } else if (cmd.cmd === 'close') {
    session.destroy();
  } else if (cmd.cmd === 'mute') {
    session.muted = true;       // a hung SMSC: enquire_link goes unanswered
    emit({ event: 'muted' });
  } else {
    emit({ event: 'unknown_cmd', cmd: cmd.cmd });
  }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  try {
    onCommand(line);
  } catch (e) {
    emit({ event: 'cmd_error', message: e.message });
  }
});
process.stdin.on('end', () => process.exit(0));

server.listen(opts.port, '127.0.0.1', () => {
  emit({ event: 'listening', port: server.address().port });
});
