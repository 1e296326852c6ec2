#!/usr/bin/env python3
"""gen-packets.py N — prints N packets for `meshinit explain -`, one per line, all distinct.

A pod's mix, for the seed's flags: app connections to service addresses (captured), the
proxy's own connections (let go), DNS queries (UDP, not captured without --redirect-dns),
inbound connections to app ports and to Istio's excluded ports, app-to-app over lo, and IPv6
(no IPv6 rules when IPv6 is off). Deterministic: the same N gives the same lines.
"""
import sys


def main():
    n = int(sys.argv[1])
    out = []
    i = 0
    while len(out) < n:
        a, b, c = (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff
        kind = i % 6
        if kind == 0:
            out.append(f"out tcp 10.{a}.{b}.{c}:{80 + i % 3} uid=1000")
        elif kind == 1:
            out.append(f"out tcp 10.{a}.{b}.{c}:443 uid=1337")
        elif kind == 2:
            out.append(f"in tcp 10.{a}.{b}.{c}:{[8080, 15021, 15090, 9000][i % 4]} src=172.16.{b}.{c}")
        elif kind == 3:
            out.append(f"out udp 10.96.{b}.{c}:53 uid=1000")
        elif kind == 4:
            out.append(f"out tcp 127.0.0.1:{8000 + i % 1000} uid=1000 sport={20000 + i % 40000}")
        else:
            out.append(f"out tcp [fd00::{a:x}:{b << 8 | c:x}]:80 uid=1000")
        i += 1
    print("\n".join(out))


main()
