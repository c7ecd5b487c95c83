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
