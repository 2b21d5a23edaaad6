#!/usr/bin/env python3
"""Writes the seed corpora under wire/testdata/fuzz from the wire test vectors
(wire/testdata/legacy.json, v2.json), so that every parser's fuzzer starts
from every real and every known-bad input. Run from the repository root;
the output is committed. Seeds in the tests' f.Add calls stay as they are."""
import hashlib, json, os

def gostr(b: bytes) -> str:
    out = []
    for c in b:
        if 0x20 <= c < 0x7f and c not in (0x22, 0x5c):
            out.append(chr(c))
        else:
            out.append('\\x%02x' % c)
    return '"' + ''.join(out) + '"'

def write(target: str, data: bytes):
    d = os.path.join('wire', 'testdata', 'fuzz', target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha256(data).hexdigest()[:16]
    with open(os.path.join(d, name), 'w') as f:
        f.write('go test fuzz v1\n[]byte(%s)\n' % gostr(data))

legacy = json.load(open('wire/testdata/legacy.json'))
for v in legacy['vectors']:
    write('FuzzFrameReader', v['wire'].encode())
    write('FuzzParseReading', v['plaintext'].encode())
    write('FuzzLegacyOpen', bytes.fromhex(v['wire'].replace('+', '')))
write('FuzzFrameReader', legacy['stream']['wire'].encode())
for b in legacy['bad']:
    write('FuzzFrameReader', b['wire'].encode())
for d in legacy['devices']:
    write('FuzzReadKeys', json.dumps(d).encode() + b'\n')
write('FuzzReadKeys', b''.join(json.dumps(d).encode() + b'\n' for d in legacy['devices']))
for v in json.load(open('wire/testdata/v2.json')):
    write('FuzzParseV2', bytes.fromhex(v['frame_hex']))
    write('FuzzParseV2Payload', bytes.fromhex(v['payload_hex']))
