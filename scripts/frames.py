#!/usr/bin/env python3
"""Data-plane check for the demo: sends one Ethernet frame into a host interface and waits for it
on the probe QEMU forwards the NIC's hub to (DESIGN.md, "Testing the data plane without a guest")."""
import argparse
import ctypes
import os
import socket
import sys
import time

ETHERTYPE = 0x88B5  # IEEE local experimental


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--netns", required=True, help="network namespace holding the interface")
    parser.add_argument("--iface", required=True, help="interface to send the frame from (the lower's peer)")
    parser.add_argument("--dst", required=True, help="destination MAC (the guest NIC's)")
    parser.add_argument("--probe-port", type=int, required=True, help="UDP port the probe delivers to")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", args.probe_port))
    probe.settimeout(0.2)

    marker = os.urandom(8)
    frame = bytes.fromhex(args.dst.replace(":", "")) + bytes.fromhex("020000000001")
    frame += ETHERTYPE.to_bytes(2, "big") + b"macvtapd-demo " + marker + bytes(32)

    # Enter the namespace only for the raw socket; the probe stays in ours. (os.setns is 3.12+.)
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newnet = 0x40000000
    with open(f"/run/netns/{args.netns}") as ns:
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        if libc.setns(ns.fileno(), clone_newnet) != 0:
            raise OSError(ctypes.get_errno(), "setns into the namespace")
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        libc.setns(home, clone_newnet)
        os.close(home)
    raw.bind((args.iface, 0))

    start = time.monotonic()
    deadline = start + args.timeout
    next_send = start
    while time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            raw.send(frame)
            next_send += 0.25
        try:
            data, _ = probe.recvfrom(65536)
        except socket.timeout:
            continue
        if marker in data:
            print(f"frame from {args.iface} reached the probe in {(time.monotonic() - start) * 1000:.1f} ms")
            return 0
    print(f"no frame from {args.iface} reached the probe within {args.timeout} s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
