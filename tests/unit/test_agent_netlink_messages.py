"""podnat.agent.changes' netlink messages, against what the kernel itself sent (recorded on Linux 6.18)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from podnat.agent.changes import generation_of, getgen_request

# The kernel's answer to getgen_request() in a namespace whose ruleset generation is 1 (NFT_MSG_NEWGEN:
# NFTA_GEN_ID 1, NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME "python"), and its answer to a message type nf_tables
# does not know (NLMSG_ERROR, -EINVAL), both read with socket.recv on Linux 6.18.44.
KERNEL_NEWGEN = bytes.fromhex(
    "300000000f0a0000010000002362000000000001080001000000000108000200000062230b000300707974686f6e0000"
)
KERNEL_ERROR = bytes.fromhex("28000000020000000100000023620000eaffffff14000000630a0100010000000000000000000000")


def test_the_request_is_nfnetlink_getgen_for_any_family() -> None:
    message = getgen_request(seq=7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", message)
    assert (length, kind >> 8, kind & 0xFF, flags, seq, pid) == (len(message), 10, 16, 1, 7, 0)
    assert message[16:] == bytes([socket.AF_UNSPEC, 0, 0, 0])


def test_the_generation_is_read_from_the_kernels_answer() -> None:
    assert generation_of(KERNEL_NEWGEN) == 1
    bumped = KERNEL_NEWGEN[:24] + struct.pack(">I", 0x01020304) + KERNEL_NEWGEN[28:]
    assert generation_of(bumped) == 0x01020304


def test_an_error_answer_is_its_negative_errno() -> None:
    assert generation_of(KERNEL_ERROR) == -errno.EINVAL


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (KERNEL_NEWGEN[:10], "netlink reply of 10 bytes"),
        (KERNEL_NEWGEN[:4] + struct.pack("=H", 0x0A03) + KERNEL_NEWGEN[6:], "not NFT_MSG_NEWGEN"),
        (KERNEL_NEWGEN[:20] + b"\x00" * 4, "without NFTA_GEN_ID"),
        (struct.pack("=I", 28) + KERNEL_NEWGEN[4:20] + struct.pack("=HH", 8, 2) + b"\x00" * 4, "without NFTA_GEN_ID"),
    ],
)
def test_an_answer_without_a_generation_is_refused(reply: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        generation_of(reply)


# The kernel's dump of a fresh namespace's IPv4 rules (local, main, default, then NLMSG_DONE, in one read) and
# of its IPv4 routes after `ip route add local 0.0.0.0/0 dev lo table 100` (that route, then the local table's
# three; NLMSG_DONE in the next read), read with socket.recv on Linux 6.18.44.
KERNEL_RULES = bytes.fromhex(
    "3400000020000200010000004b79000002000000ff0000010000000008000f00ff00000008000e00ffffffff0500150002000000"
    "3c00000020000200010000004b79000002000000fe0000010000000008000f00fe00000008000e00ffffffff0500150002000000"
    "08000600fe7f00003c00000020000200010000004b79000002000000fd0000010000000008000f00fd00000008000e00ffffffff"
    "050015000200000008000600ff7f00001400000003000200010000004b79000000000000"
)
KERNEL_ROUTES = bytes.fromhex(
    "2c000000180002000100000009710000020000006403fe020000000008000f006400000008000400010000003c00000018000200"
    "010000000971000002080000ff02fe020000000008000f00ff000000080001007f000000080007007f000001080004000100"
    "00003c00000018000200010000000971000002200000ff02fe020000000008000f00ff000000080001007f00000108000700"
    "7f00000108000400010000003c00000018000200010000000971000002200000ff02fd030000000008000f00ff0000000800"
    "01007fffffff080007007f0000010800040001000000"
)
KERNEL_DONE = bytes.fromhex("1400000003000200010000000971000000000000")


def test_a_dump_request_asks_for_every_entry_of_one_family() -> None:
    from podnat.agent.changes import RTM_GETRULE, dump_request

    message = dump_request(RTM_GETRULE, socket.AF_INET6)
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", message)
    assert (length, kind, flags, message[16]) == (len(message), 34, 0x301, socket.AF_INET6)


def test_the_kernels_dumps_are_split_into_their_messages_up_to_done() -> None:
    from podnat.agent.changes import dump_messages

    rules, done = dump_messages(KERNEL_RULES)
    assert done and [rule[4] for rule in rules] == [255, 254, 253]  # local, main, default
    routes, done = dump_messages(KERNEL_ROUTES)
    assert not done and len(routes) == 4
    assert dump_messages(KERNEL_DONE) == ([], True)
    with pytest.raises(OSError, match="Invalid argument"):
        dump_messages(KERNEL_ERROR)
    with pytest.raises(ValueError, match="netlink message of 60 bytes"):
        dump_messages(KERNEL_ROUTES[:100])


def test_only_the_tables_routes_are_digested_without_what_moves_by_itself() -> None:
    from podnat.agent.changes import RTA_CACHEINFO, dump_messages, route_in_table

    routes, _ = dump_messages(KERNEL_ROUTES)
    kept = [route_in_table(r, 100) for r in routes]
    assert kept[0] == routes[0] and kept[1:] == [None, None, None]  # table 100's; the local table's are not
    assert [route_in_table(r, 255) is not None for r in routes] == [False, True, True, True]
    # a route's cache info (its use counters, expiry) is left out: the same route, digested alike
    cacheinfo = struct.pack("=HH", 4 + 32, RTA_CACHEINFO) + bytes(range(32))
    assert route_in_table(routes[0] + cacheinfo, 100) == routes[0]


# The kernel's sock_diag answer for the IPv4 TCP sockets in LISTEN of a namespace where one socket listens on
# 127.0.0.1:15000 (then NLMSG_DONE, in the next read), read with socket.recv on Linux 6.18.44.
KERNEL_LISTENING = bytes.fromhex(
    "7c0000001400020001000000fb2f0000020a00003a9800007f00000100000000000000000000000000000000000000000000"
    "000000000000000000000004000000000000000000000000000000800000000000000080a04601050008000000000008000f"
    "00000000000c00150001000000000000000600160052000000"
)


def test_the_listening_sockets_are_asked_of_sock_diag_and_their_ports_read_from_its_answer() -> None:
    from podnat.agent.changes import dump_messages, listening_request, local_port

    message = listening_request(socket.AF_INET6)
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", message)
    family, protocol, _, _, states = struct.unpack_from("=BBBBI", message, 16)
    assert (length, kind, flags) == (len(message), 20, 0x301) and len(message) == 16 + 56
    assert (family, protocol, states) == (socket.AF_INET6, 6, 1 << 10)  # TCP, LISTEN only
    sockets, done = dump_messages(KERNEL_LISTENING)
    assert [local_port(s) for s in sockets] == [15000] and not done
