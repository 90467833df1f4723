#!/usr/bin/env python3
"""Helpers for bench/run: request bodies, generated protos, parsing h2load.

    tools.py body hello NAME OUT        framed helloworld.HelloRequest for h2load -d
    tools.py body echo SIZE OUT         framed bench.Blob of SIZE bytes
    tools.py body compute N OUT         framed bench.RouteRequest for N points
    tools.py reply-size hello NAME      bytes of DATA h2load should count per reply
    tools.py reply-size echo SIZE
    tools.py reply-size compute N
    tools.py genprotos N DIR            N .proto files importing each other + handlers
    tools.py h2load FILE                h2load's output -> one JSON object
    tools.py freeport                   a free TCP port on 127.0.0.1
"""

import json
import os
import re
import socket
import struct
import sys


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def len_field(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def frame(msg):
    """gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(msg)) + msg


def varint_field(field, n):
    return varint(field << 3) + varint(n)


def compute_distance(n):
    """bench.Compute/Route's distance for n points (see bench/protos/bench.proto)."""
    import math

    def point(i):
        return (400000000 + (i * 7919) % 2000000 - 1000000, -740000000 + (i * 104729) % 2000000 - 1000000)

    total = 0.0
    for i in range(1, n):
        a, b = point(i - 1), point(i)
        lat1, lat2 = math.radians(a[0] / 1e7), math.radians(b[0] / 1e7)
        dlat, dlon = lat2 - lat1, math.radians((b[1] - a[1]) / 1e7)
        h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
        total += 6371000 * 2 * math.atan2(math.sqrt(h), math.sqrt(1 - h))
    return math.floor(total)


def message(kind, arg):
    if kind == "hello":
        return len_field(1, arg.encode())
    if kind == "compute":
        return varint_field(1, int(arg))
    if kind == "echo":
        size = int(arg)
        return len_field(1, bytes((i * 7 + 3) & 0xFF for i in range(size)))
    sys.exit(f"unknown body kind {kind}")


def reply(kind, arg):
    if kind == "hello":
        return len_field(1, f"Hello, {arg}!".encode())
    if kind == "compute":
        n = int(arg)
        return varint_field(1, n) + varint_field(2, compute_distance(n))
    return message(kind, arg)  # echo replies with the request


# ---------------------------------------------------------------- generated protos

def genprotos(n, out):
    """Writes N proto files under OUT/protos/gen/ and reply handlers under OUT/handlers/.

    File i imports file i-1 and file i//2 (a chain plus a tree, so the import
    graph is deep and shared), defines two messages (one using the imported
    types, a map and an enum) and, every 10th file, a service with two unary
    methods. Every service gets a `reply` handler. The probe call is
    /gen.S0000/Get with an empty request.
    """
    pdir = os.path.join(out, "protos", "gen")
    hdir = os.path.join(out, "handlers")
    os.makedirs(pdir, exist_ok=True)
    os.makedirs(hdir, exist_ok=True)
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    for i in range(n):
        deps = sorted({j for j in (i - 1, i // 2) if 0 <= j < i})
        lines = ['syntax = "proto3";', "", "package gen;", ""]
        lines += [f'import "gen/f{j:04d}.proto";' for j in deps]
        lines += [
            "",
            f"enum Kind{i:04d} {{",
            f"  KIND{i:04d}_UNSPECIFIED = 0;",
            f"  KIND{i:04d}_A = 1;",
            f"  KIND{i:04d}_B = 2;",
            "}",
            "",
            f"// Message {i}: refers to the messages of the files it imports.",
            f"message M{i:04d} {{",
            "  string name = 1;",
            "  int64 id = 2;",
            f"  Kind{i:04d} kind = 3;",
            "  repeated string tags = 4;",
            f"  map<string, int32> counts = 5;",
        ]
        for k, j in enumerate(deps):
            lines.append(f"  M{j:04d} ref{k} = {10 + k};")
            lines.append(f"  repeated N{j:04d} items{k} = {20 + k};")
        lines += [
            f"  oneof choice {{ string text = 30; bytes blob = 31; }}",
            "}",
            "",
            f"message N{i:04d} {{",
            "  double x = 1;",
            "  double y = 2;",
            f"  M{i:04d} parent = 3;",
            "}",
        ]
        if i % 10 == 0:
            prev = deps[-1] if deps else i
            lines += [
                "",
                f"service S{i:04d} {{",
                f"  rpc Get(M{i:04d}) returns (M{i:04d});",
                f"  rpc Put(N{i:04d}) returns (M{prev:04d});",
                "}",
            ]
            handler = {
                "service": f"gen.S{i:04d}",
                "methods": {
                    "Get": {"reply": {"name": "ok", "id": i}},
                    "Put": {"reply": {"name": "put"}},
                },
            }
            with open(os.path.join(hdir, f"s{i:04d}.json"), "w") as f:
                json.dump(handler, f, indent=1)
        with open(os.path.join(pdir, f"f{i:04d}.proto"), "w") as f:
            f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- h2load

def parse_h2load(path):
    text = open(path, errors="replace").read()
    out = {}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    if m:
        secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        out.update(secs=secs, req_per_s=float(m.group(3)))
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored(?:, (\d+) timeout)?",
        text,
    )
    if m:
        out.update(
            total=int(m.group(1)),
            done=int(m.group(3)),
            succeeded=int(m.group(4)),
            failed=int(m.group(5)),
            errored=int(m.group(6)),
            timeout=int(m.group(7) or 0),
        )
    m = re.search(r"traffic: .*?\((\d+)\) total.*?\((\d+)\) headers.*?\((\d+)\) data", text)
    if m:
        out.update(traffic_total=int(m.group(1)), traffic_headers=int(m.group(2)), traffic_data=int(m.group(3)))
    return out


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd = argv[1]
    if cmd == "body":
        with open(argv[4], "wb") as f:
            f.write(frame(message(argv[2], argv[3])))
    elif cmd == "hex":
        print(message(argv[2], argv[3]).hex())
    elif cmd == "reply-size":
        print(len(frame(reply(argv[2], argv[3]))))
    elif cmd == "genprotos":
        genprotos(int(argv[2]), argv[3])
    elif cmd == "h2load":
        print(json.dumps(parse_h2load(argv[2])))
    elif cmd == "freeport":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
