#!/usr/bin/env python3
"""gen-exclusions.py cidrs N | ports N — prints a comma-separated exclusion list.

cidrs: N distinct, non-overlapping IPv4 /32s, the shortest spellings first (single-digit
octets "a.b.c.d/32", a = 1..9: 9,000 of 10 characters, then a second octet of 10..99), so that
10,000 of them (110,999 bytes) fit in one argument or environment string: Linux limits each to
128 KiB (MAX_ARG_STRLEN, 131,072 bytes with the NUL) and the script checks it. None is in
127.0.0.0/8 or in 198.18.0.0/15, the benchmark's own addresses, so none matches its traffic.
ports: N TCP/UDP ports from 20000 up (clear of 80, 15000-15090 and the ephemeral range's use).
"""
import sys

MAX_ARG_STRLEN = 131072


def cidrs(n):
    out = []
    for second in list(range(10)) + list(range(10, 100)):
        for first in range(1, 10):
            for third in range(10):
                for fourth in range(10):
                    if len(out) == n:
                        return out
                    out.append(f"{first}.{second}.{third}.{fourth}/32")
    if len(out) < n:
        sys.exit(f"gen-exclusions: at most {len(out)} CIDRs")
    return out


def main():
    kind, n = sys.argv[1], int(sys.argv[2])
    if kind == "cidrs":
        items = cidrs(n)
    elif kind == "ports":
        if n > 10000:
            sys.exit("gen-exclusions: at most 10000 ports")
        items = [str(20000 + i) for i in range(n)]
    else:
        sys.exit("usage: gen-exclusions.py cidrs|ports N")
    text = ",".join(items)
    if len(text) + 1 > MAX_ARG_STRLEN:
        sys.exit(f"gen-exclusions: {len(text)} bytes exceed Linux's {MAX_ARG_STRLEN}-byte argument limit")
    print(text)


main()
