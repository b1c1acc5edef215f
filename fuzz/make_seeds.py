#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/seeds/ (committed; run again only to change it).

frames:   byte 0 picks max_payload (and, high bit, permessage-deflate),
          byte 1 the read schedule (see
          fuzz/src/frames.rs), then masked client frames.
protocol: client messages as docs/protocol.md shows them, valid and not.
record:   feed lines from tests/fixtures (the dirty ones one per file).
merge:    [target, first, second] from RFC 7396's examples and the
          compose cases in src/engine/state.rs.
"""
import json
import os
import struct
import zlib

ROOT = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(ROOT, "seeds")
FIXTURES = os.path.join(ROOT, "..", "tests", "fixtures")


def write(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


def frame(first, payload, mask=b"\x12\x34\x56\x78", length=None, wide=False):
    n = len(payload) if length is None else length
    if wide:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    elif n < 126:
        head = bytes([first, 0x80 | n])
    elif n <= 0xFFFF:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def deflated(message):
    """A message compressed as a permessage-deflate client sends it."""
    c = zlib.compressobj(wbits=-15)
    out = c.compress(message) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


# max_payload picks (index into MAX_PAYLOADS): 0 -> 0, 2 -> 125, 5 -> 65535,
# 7 -> 64 KiB + 1. Schedule byte: high 3 bits * 3 = read-ahead length.
PING = b'{"op":"ping","id":4}'
SUB = b'{"op":"subscribe","id":1,"channels":["quotes.*","scores.>"]}'
frames = {
    "text": (7, 0x01, frame(0x81, SUB)),
    "ping-pong-close": (2, 0x22, frame(0x89, b"hi") + frame(0x8A, b"") + frame(0x88, b"\x03\xe8bye")),
    "fragmented": (7, 0x03, frame(0x01, PING[:5]) + frame(0x89, b"") + frame(0x80, PING[5:])),
    "len16": (7, 0x44, frame(0x81, b"x" * 300)),
    "len64": (7, 0x05, frame(0x82, b"y" * 3, wide=True)),
    "too-large": (2, 0x06, frame(0x81, b"z" * 200)),
    "huge-len64": (7, 0x07, frame(0x81, b"", length=1 << 63)[:14]),
    "unmasked": (7, 0x08, bytes([0x81, 0x02]) + b"hi"),
    "rsv1": (7, 0x09, frame(0xC1, b"a")),
    "opcode3": (7, 0x0A, frame(0x83, b"a")),
    "control-fragmented": (7, 0x0B, frame(0x09, b"a")),
    "control-126": (7, 0x0C, frame(0x89, b"p" * 126)),
    "truncated": (7, 0xEB, frame(0x81, SUB)[:9]),
    "empty-frames": (0, 0x0D, frame(0x81, b"") * 5 + frame(0x80, b"")),
    "many": (5, 0x6E, b"".join(frame(0x81, PING) for _ in range(40))),
    # With permessage-deflate agreed (high bit of byte 0): RSV1 marks a
    # compressed message; a bomb inflates past max_payload.
    "deflate-text": (0x87, 0x01, frame(0xC1, deflated(SUB))),
    "deflate-fragmented": (0x87, 0x03, frame(0x41, deflated(PING)[:4]) + frame(0x80, deflated(PING)[4:])),
    "deflate-bomb": (0x87, 0x44, frame(0xC1, deflated(b"0" * (1 << 20)))),
    "deflate-rsv1-continuation": (0x87, 0x05, frame(0x01, b"a") + frame(0xC0, b"b")),
    "deflate-rsv1-ping": (0x87, 0x06, frame(0xC9, b"a")),
    "deflate-corrupt": (0x87, 0x07, frame(0xC1, b"\xff\xff\xff\x00\x12")),
}
for name, (pick, seed, data) in frames.items():
    write("frames", name, bytes([pick, seed]) + data)

messages = [
    '{"op":"ping"}',
    '{"op":"ping","id":4}',
    '{"op":"subscribe","id":1,"channels":["quotes.*","scores.>"]}',
    '{"op":"subscribe","id":1,"channels":["quotes.AAPL"],"fields":["bid","ask"]}',
    '{"op":"subscribe","id":1,"channels":["quotes.AAPL"],"max_hz":1}',
    '{"op":"subscribe","id":1,"channels":["quotes.*"],"since":{"quotes.AAPL":1042},"epoch":"19a4f2c3d5e1b2c3d4"}',
    '{"op":"unsubscribe","id":3,"channels":["quotes.*"]}',
    '{"op":"subscribe","id":2,"channels":["a.b","a.c","a.d","a.e"]}',
    '{"op":"subscribe","channels":[]}',
    '{"op":"subscribe","id":7,"channels":["bad..name"]}',
    '{"op":"subscribe","id":"x","channels":["q"]}',
    '{"op":"fly","id":9}',
    '{"op":"subscribe","channels":["q"],"max_hz":-1,"fields":[""]}',
    '[{"op":"ping"}]',
    '{"op":"ping","x":[[[[[[[[[[1]]]]]]]]]]}',
    '{"op":"ping","id":9223372036854775808}',
    '{"op":"ping"',
]
for i, text in enumerate(messages):
    write("protocol", f"message-{i:02}", text)

lines = open(os.path.join(FIXTURES, "dirty-sample.ndjson"), "rb").read().split(b"\n")
write("record", "dirty-head", b"\n".join(lines[:6]) + b"\n")
count = 0
for i, line in enumerate(lines):
    try:
        ok = isinstance(json.loads(line)["data"], dict) and line.startswith(b'{"channel":"')
    except Exception:
        ok = False
    if not ok or b"s0.s1" in line or b'"channel":""' in line:
        write("record", f"dirty-{i + 1:04}", line + b"\n")
        count += 1
mixed = open(os.path.join(FIXTURES, "replay-mixed.ndjson"), "rb").read().split(b"\n")
write("record", "mixed-scores", b"\n".join(mixed[60:64]) + b"\n")
write("record", "mixed-book", b"\n".join(mixed[349:353]))
write("record", "crlf", b'{"channel":"a.b","data":{"x":1}}\r\n\r\n{"channel":"a.b","data":{"x":null},"ts":5}\r\n')

merges = [
    ({"a": "b"}, {"a": "c"}, {"b": "c"}),
    ({"a": "b", "b": "c"}, {"a": None}, {"a": 7}),
    ({"a": ["b"]}, {"a": "c"}, {"a": {"b": 1}}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"e": {"f": 1}}}),
    ({"e": None}, {"a": 1}, {"e": {"x": None}}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {"ddd": 2}}}),
    ({"a": 1, "b": {"x": 1, "y": 2}}, {"b": {"x": None}}, {"b": {"z": 3}}),
    ({"a": {"p": 1}, "b": 5, "c": [1]}, {"c": [2]}, {"c": [3], "d": {"e": None}}),
    ({"o": {"k": "v"}}, {"o": {"k": "w"}}, {"o": {"k": {"deeper": True}}}),
    ({"a": {"q": {"r": 1}}}, {"a": {"q": {"r": 1}}}, {"a": {"q": {"s": None}}}),
]
for i, triple in enumerate(merges):
    write("merge", f"json-{i:02}", json.dumps(list(triple), separators=(",", ":")))
write("merge", "recipe", bytes(range(1, 64)))
