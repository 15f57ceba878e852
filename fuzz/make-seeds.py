#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the test fixtures and examples.

Run from the repository root; the output is committed. libFuzzer adds what it finds to a working
copy (`make fuzz` copies these seeds to .build-fuzz/corpus), never to these files.
"""
import json
import os
import re
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.join(ROOT, "fuzz", "corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


# config: every fixture and example file; two files of one directory joined by a NUL.
def config():
    sources = []
    for base in ["Tests/MacvtapdConfigTests/Fixtures/valid", "Tests/MacvtapdConfigTests/Fixtures/invalid",
                 "examples", "examples/conf.d"]:
        path = os.path.join(ROOT, base)
        for name in sorted(os.listdir(path)):
            if name.endswith((".yaml", ".yml")):
                data = open(os.path.join(path, name), "rb").read()
                sources.append(data)
                write("config", base.replace("/", "_") + "_" + name, data)
    conf_d = os.path.join(ROOT, "examples/conf.d")
    parts = [open(os.path.join(conf_d, n), "rb").read() for n in sorted(os.listdir(conf_d)) if n.endswith(".yaml")]
    if parts:
        write("config", "conf.d-joined", b"\0".join(parts))
        write("config", "conf.d-twice", b"\0".join(parts + parts))


GREETING = ('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
            '"package": "Debian 1:7.2+dfsg-7+deb12u18"}, "capabilities": ["oob"]}}')


# qmp: the first byte is the read size minus one; then a monitor's stream.
def qmp():
    info_network = "hub 10\\r\\n \\\\ P1: T1: index=0,type=tap,fd=12\\r\\n"
    streams = {
        "greeting": [GREETING],
        "session": [GREETING, '{"return": {}}', '{"return": {"status": "running", "running": true}}',
                    '{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "STOP"}',
                    '{"return": "' + info_network + '"}',
                    '{"error": {"class": "GenericError", "desc": "Duplicate ID \'T1\' for netdev"}}'],
        "events": [GREETING, '{"event": "NIC_RX_FILTER_CHANGED", "data": {"name": "nic0", "path": "/machine/peripheral/nic0/virtio-backend"}, "timestamp": {"seconds": 1, "microseconds": 2}}',
                   '{"event": "DEVICE_DELETED", "data": {"device": "nic1"}, "timestamp": {"seconds": 1, "microseconds": 3}}',
                   '{"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-signal"}}'],
        "late-and-odd": [GREETING, '{"return": {}, "id": 99}', '{"return": {}}', '{"id": 1}', '[1, 2.5e3, -0, null]',
                         '{"return": ["\\u00e9\\ud83d\\ude00", true, false]}'],
        "qom": [GREETING, '{"return": [{"name": "type", "type": "string"}, {"name": "mac", "type": "str"}]}',
                '{"return": "52:54:00:12:34:56"}'],
    }
    for name, lines in streams.items():
        for chunk in (0, 6, 255):
            ending = "\r\n" if chunk == 6 else "\n"
            write("qmp", f"{name}-{chunk + 1}", bytes([chunk]) + ending.join(lines).encode() + ending.encode())
    write("qmp", "no-greeting", bytes([63]) + b'{"return": {}, "id": 1}\n')


# network-info: the captured QEMU 7.2 outputs in NetworkInfoParserTests.
def network_info():
    text = open(os.path.join(ROOT, "Tests/MacvtapdQMPTests/NetworkInfoParserTests.swift")).read()
    fixtures = text.split("enum InfoNetworkFixtures", 1)[1].split("\n}\n", 1)[0]
    for match in re.finditer(r'static let (\w+) =\s*((?:\s*\+?\s*"(?:[^"\\]|\\.)*"\s*)+)', fixtures):
        literal = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', match.group(2)))
        value = literal.replace("\\r", "\r").replace("\\n", "\n").replace("\\\\", "\\")
        write("network-info", match.group(1), value)


def le16(v):
    return struct.pack("<H", v)


def le32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def message(type_, flags, seq, body):
    return le32(16 + len(body)) + le16(type_) + le16(flags) + le32(seq) + le32(0) + body


def attribute(type_, payload):
    data = le16(4 + len(payload)) + le16(type_) + payload
    return data + b"\0" * ((4 - len(data) % 4) % 4)


def ifinfo(index, flags=0, change=0):
    return b"\0\0" + le16(1) + le32(index) + le32(flags) + le32(change)


def macvtap(index=7, mode=4, alias=b"macvtapd:web1/nic0", change=0):
    body = ifinfo(index, 0x1003, change)
    body += attribute(3, b"mvt0\0") + attribute(13, le32(500)) + attribute(16, b"\6") + attribute(4, le32(1500))
    body += attribute(5, le32(3))
    if alias:
        body += attribute(20, alias + b"\0")
    body += attribute(33, b"\1") + attribute(1, bytes([2, 0, 0x5E, 0, 0, 1])) + attribute(2, b"\xff" * 6)
    body += attribute(0x1A, le32(4))  # IFLA_LINK_NETNSID
    info_data = attribute(0x8002, attribute(1, le32(mode)) + attribute(2, le16(0)))
    body += attribute(0x8012, attribute(1, b"macvtap\0") + info_data)
    return body


# netlink: notifications, a dump with its NLMSG_DONE, errors with and without extended acks.
def netlink():
    write("netlink", "newlink-added", message(16, 0, 0, macvtap(change=0xFFFFFFFF)))
    write("netlink", "newlink-changed", message(16, 0, 0, macvtap(change=1)))
    write("netlink", "dellink", message(17, 0, 0, macvtap(alias=None)))
    write("netlink", "dump", message(16, 2, 4, macvtap(7)) + message(16, 2, 4, macvtap(8, 2)) + message(3, 2, 4, le32(0)))
    write("netlink", "done-failed", message(3, 2, 4, le32(-4)))
    request = le32(112) + le16(16) + le16(0x605) + le32(7) + le32(0)
    write("netlink", "error-ack-tlvs", message(2, 0x300, 7, le32(-17) + request + attribute(1, b"File exists\0")))
    echoed = message(16, 0x605, 7, ifinfo(0) + attribute(3, b"x\0"))
    write("netlink", "error-uncapped", message(2, 0x200, 7, le32(-22) + echoed + attribute(1, b"bad\0")))
    write("netlink", "ack", message(2, 0x100, 2, le32(0) + le32(32) + le16(17) + le16(5) + le32(2) + le32(0)))
    write("netlink", "veth", message(16, 0, 0, ifinfo(3, 0x11043) + attribute(3, b"lower0\0")
                                     + attribute(0x12, attribute(1, b"veth\0"))))


# control: calls as the CLI and a varlink client send them.
def control():
    calls = {
        "getinfo": '{"method": "org.varlink.service.GetInfo"}',
        "describe": '{"method": "org.varlink.service.GetInterfaceDescription", "parameters": {"interface": "io.macvtapd"}}',
        "status": '{"method": "io.macvtapd.Status", "more": true}',
        "apply": '{"method": "io.macvtapd.Apply", "parameters": {"config": "/etc/macvtapd", "timeout_ms": 5000}}',
        "oneway": '{"method": "io.macvtapd.Apply", "oneway": true, "parameters": {"config": "/etc/macvtapd"}}',
        "unknown": '{"method": "io.macvtapd.Nope", "upgrade": false}',
    }
    example = open(os.path.join(ROOT, "Tests/MacvtapdConfigTests/Fixtures/valid/flow-style-and-anchors.yaml")).read()
    calls["plan"] = json.dumps({"method": "io.macvtapd.Plan",
                                "parameters": {"files": [{"path": "/etc/macvtapd/macvtapd.yaml", "content": example}]}})
    for name, call in calls.items():
        write("control", name, call)


for generate in (config, qmp, network_info, netlink, control):
    generate()
