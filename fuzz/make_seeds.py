#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/.

Each seed is a well-formed input in the target's own encoding (see the target's doc
comment): the requests, commands and register programming a real driver or frontend sends,
so the fuzzer starts from inputs that reach deep into each parser and mutates from there.
Run it again after changing a target's input encoding: `python3 fuzz/make_seeds.py`.
"""

import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
DATA = 0x4000  # fuzz/src/lib.rs: the fuzzer-filled area starts here


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


class Memory:
    """Guest memory contents from DATA on, as the targets write `input.rest()` there."""

    def __init__(self):
        self.buf = bytearray()

    def put(self, addr, data):
        off = addr - DATA
        if len(self.buf) < off + len(data):
            self.buf.extend(bytes(off + len(data) - len(self.buf)))
        self.buf[off:off + len(data)] = data

    def bytes(self):
        return bytes(self.buf)


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


NEXT, WRITE = 1, 2


def queue(descs, heads, size=16, mem=None):
    """split_queue(): descriptors, avail flags and index, avail ring, then memory."""
    out = bytearray()
    for i in range(size):
        addr, length, flags, nxt = descs[i] if i < len(descs) else (0, 0, 0, 0)
        out += u32(addr) + u32(length) + u16(flags) + u16(nxt)
    out += u16(0) + u16(len(heads))
    for i in range(size):
        out += u16(heads[i] if i < len(heads) else 0)
    return bytes(out) + (mem.bytes() if mem else b"")


def virtio_blk():
    mem = Memory()
    descs, heads = [], []

    def request(ty, sector, data_descs, hdr_at):
        heads.append(len(descs))
        mem.put(hdr_at, u32(ty) + u32(0) + u64(sector))
        chain = [(hdr_at, 16, 0)] + data_descs
        for j, (addr, length, flags) in enumerate(chain):
            descs.append((addr, length, flags | NEXT, len(descs) + 1))
        descs.append((0x6000 + len(heads), 1, WRITE, 0))  # status byte

    mem.put(0x5000, bytes(range(256)) * 4)
    request(1, 2, [(0x5000, 1024, 0)], 0x4000)  # write 2 sectors
    request(0, 2, [(0x7000, 1024, WRITE)], 0x4010)  # read them back
    request(4, 0, [], 0x4020)  # flush
    request(8, 0, [(0x7400, 20, WRITE)], 0x4030)  # GET_ID
    mem.put(0x4100, u64(8) + u32(4) + u32(0))  # discard segment: sector 8, 4 sectors
    request(11, 0, [(0x4100, 16, 0)], 0x4040)
    mem.put(0x6100, bytes(8))
    # size 16 (1 << 4), mode: event_idx + discard + write_zeroes, seg_max 8
    head = u8(4) + u8(0x0e) + u8(8)
    write("virtio_blk", "requests", head + queue(descs, heads, mem=mem))
    # An indirect table, a looping chain and a read past the end of the disk.
    mem2 = Memory()
    mem2.put(0x4000, u32(0) + u32(0) + u64(126))
    mem2.put(0x4800, struct.pack("<QIHH", 0x4000, 16, NEXT, 1) + struct.pack("<QIHH", 0x7000, 4096, WRITE | NEXT, 2)
             + struct.pack("<QIHH", 0x6000, 1, WRITE, 0))
    d2 = [(0x4800, 48, 4, 0), (0x4000, 16, NEXT, 2), (0x7000, 512, WRITE | NEXT, 1)]
    write("virtio_blk", "indirect-and-loop", u8(4) + u8(0) + u8(8) + queue(d2, [0, 1], mem=mem2))


VNET_HDR = 12


def virtio_net():
    feats = (1 << 32) | 1 | (1 << 11) | (1 << 15) | (1 << 17) | (1 << 22)  # VERSION_1 CSUM HOST_TSO4 MRG_RXBUF CTRL_VQ MQ
    # Transmit: a plain frame, a TSO frame with checksum offload, header and frame apart.
    mem = Memory()
    frame = bytes([0xff] * 6 + [0x52, 0x54, 0, 0, 0, 1]) + b"\x08\x00" + bytes(46)
    mem.put(0x4000, bytes(VNET_HDR) + frame)
    tso = struct.pack("<BBHHHHH", 1, 1, 54, 1448, 34, 16, 0)  # NEEDS_CSUM, GSO TCPV4
    mem.put(0x5000, tso)
    mem.put(0x5100, bytes(3000))
    descs = [(0x4000, VNET_HDR + len(frame), 0, 0), (0x5000, VNET_HDR, NEXT, 2), (0x5100, 3000, 0, 0)]
    write("virtio_net", "tx", u8(0) + u64(feats) + u8(4) + u8(1) + queue(descs, [0, 1], mem=mem))
    # Receive: three frames into mergeable single-page buffers.
    rxd = [(0x4000 + 0x1000 * i, 4096, WRITE, 0) for i in range(8)]
    sizes = u8(3) + u16(60) + u16(1514) + u16(9000) + u8(1)
    write("virtio_net", "rx", u8(1) + u64(feats) + u8(4) + u8(1) + sizes + queue(rxd, list(range(8))))
    # Control: VQ_PAIRS_SET 2, then an unknown class.
    mem = Memory()
    mem.put(0x4000, u8(4) + u8(0))  # class MQ, VQ_PAIRS_SET
    mem.put(0x4010, u16(2))
    mem.put(0x4100, u8(0) + u8(1))  # class RX, command 1
    ctl = [(0x4000, 2, NEXT, 1), (0x4010, 2, NEXT, 2), (0x4020, 1, WRITE, 0),
           (0x4100, 2, NEXT, 4), (0x4120, 1, WRITE, 0)]
    write("virtio_net", "ctrl", u8(2) + u64(feats) + u8(4) + u8(0) + u8(4) + u8(0) + queue(ctl, [0, 3], mem=mem))


def nvme():
    mem = Memory()
    asq, acq, iosq, iocq = 0x4000, 0x5000, 0xA000, 0xB000

    def sqe(opcode, cid, nsid=0, prp1=0, prp2=0, cdw10=0, cdw11=0, cdw12=0, cdw13=0):
        dw = [opcode | cid << 16, nsid, 0, 0, 0, 0, prp1 & 0xffffffff, prp1 >> 32,
              prp2 & 0xffffffff, prp2 >> 32, cdw10, cdw11, cdw12, cdw13, 0, 0]
        return b"".join(u32(d) for d in dw)

    admin = [
        sqe(0x06, 1, prp1=0x10000, cdw10=1),  # identify controller
        sqe(0x06, 2, nsid=1, prp1=0x11000, cdw10=0),  # identify namespace
        sqe(0x05, 3, prp1=iocq, cdw10=15 << 16 | 1, cdw11=1 << 16 | 3),  # create I/O CQ 1
        sqe(0x01, 4, prp1=iosq, cdw10=15 << 16 | 1, cdw11=1 << 16 | 1),  # create I/O SQ 1
        sqe(0x09, 5, cdw10=0x07, cdw11=3 << 16 | 3),  # set features: queue count
        sqe(0x02, 6, nsid=0xffffffff, prp1=0x12000, cdw10=(128 - 1) << 16 | 2),  # SMART log
    ]
    for i, c in enumerate(admin):
        mem.put(asq + 64 * i, c)
    # PRP list for an 12 KiB transfer: PRP1 mid-page, PRP2 → list of two pages.
    mem.put(0xC000, u64(0x21000) + u64(0x22000))
    mem.put(0xC100, u32(0) + u32(8) + u64(16))  # DSM range: 8 blocks at LBA 16
    io = [
        sqe(0x01, 7, nsid=1, prp1=0xD000, cdw10=0, cdw12=7 | 1 << 30),  # write 4 KiB, FUA
        sqe(0x02, 8, nsid=1, prp1=0x20200, prp2=0xC000, cdw10=8, cdw12=23),  # read via list
        sqe(0x00, 9, nsid=1),  # flush
        sqe(0x09, 10, nsid=1, prp1=0xC100, cdw10=0, cdw11=4),  # deallocate
    ]
    for i, c in enumerate(io):
        mem.put(iosq + 64 * i, c)
    mem.put(0xD000, bytes(range(256)) * 16)
    script = b""
    for op, sel, value in [(0, 0, len(admin)), (0, 1, len(admin)), (0, 2, len(io)), (0, 3, len(io)),
                           (4, 0x1c, 0), (3, 4, 0)]:
        script += u8(op) + u16(sel) + u32(value)
    # Ops are read 7 bytes each; `steps` below says how many.
    steps = len(script) // 7
    write("nvme", "admin-and-io", u8(16) + u8(2) + u8(0) + u8(steps) + script + mem.bytes())


E1000_REGS = ["CTRL", "STATUS", "EECD", "EERD", "MDIC", "ICR", "ICS", "IMS", "IMC", "RCTL",
              "TCTL", "RDBAL", "RDBAH", "RDLEN", "RDH", "RDT", "TDBAL", "TDBAH", "TDLEN", "TDT", "TDH"]


def e1000():
    mem = Memory()

    def w(reg, value):
        return u8(0) + u16(E1000_REGS.index(reg)) + u32(value)

    frame = bytes([0xff] * 6 + [0x52, 0x54, 0, 0x12, 0x34, 0x56]) + b"\x08\x00" + bytes(46)
    mem.put(0x9000, frame)
    # Legacy transmit descriptor: buffer, length, CSO, CMD (EOP | IFCS | RS), STA, CSS, special.
    mem.put(0x8000, u64(0x9000) + u16(len(frame)) + u8(0) + u8(0x0b) + u8(0) + u8(0) + u16(0))
    # A context descriptor then a TSO data descriptor.
    mem.put(0x8010, u8(14) + u8(24) + u16(33) + u8(34) + u8(50) + u16(0) + u32(0x2d00_0000 | 1514) + u8(0) + u8(0) + u16(1460))
    mem.put(0x8020, u64(0x9000) + u32(0x2300_0000 | 3000) + u8(0) + u8(0) + u16(0))
    for i in range(4):
        mem.put(0xA000 + 16 * i, u64(0xB000 + 0x800 * i) + bytes(8))
    script = b"".join([
        w("EERD", 1 | 0 << 8), w("MDIC", 0x0820_0000 | 1 << 21), w("IMS", 0xff),
        w("TDBAL", 0x8000), w("TDBAH", 0), w("TDLEN", 0x80), w("TDH", 0), w("TCTL", 2), w("TDT", 1),
        w("TDT", 3),
        w("RDBAL", 0xA000), w("RDLEN", 0x80), w("RDH", 0), w("RCTL", 2), w("RDT", 4),
        u8(3) + u16(0) + u32(64), u8(3) + u16(0) + u32(1514), u8(2) + u16(5) + u32(0),
        w("CTRL", 1 << 26),
    ])
    write("e1000", "tx-rx", u8(len(script) // 7) + script + mem.bytes())


def virtio_pci():
    ops = []

    def op(code, offset, value):
        ops.append(u8(code) + u16(offset) + u64(value))

    W1, W2, W4, W8 = 0, 66, 132, 192  # common config writes of 1, 2, 4, 8 bytes
    op(W1, 0x14, 1)
    op(W1, 0x14, 3)
    op(W4, 0x00, 1)
    op(W4 + 1, 0x04, 0)  # read device features (op % 6 == 1)
    op(W4, 0x08, 1)
    op(W4, 0x0c, 1)
    op(W1, 0x14, 11)
    for q in range(2):
        op(W2, 0x16, q)
        op(W2, 0x18, 16)
        for reg, addr in [(0x20, 0x10000), (0x28, 0x11000), (0x30, 0x12000)]:
            op(W4, reg, addr + 0x3000 * q)
            op(W4, reg + 4, 0)
        op(W2, 0x1a, q + 1)
        op(W2, 0x1c, 1)
    op(W2, 0x10, 0)
    op(W1, 0x14, 15)
    op(128, 0x10, 0xfee00000)  # MSI-X table entry 1: address, data, unmask
    op(128, 0x18, 0x4041)
    op(128, 0x1c, 0)
    op(3, 0, 0x8000)  # message control: enable
    op(130, 0x04, 0x0006)  # config space: command register
    op(130, 0x10, 0xffffffff)  # BAR0 sizing
    op(W8, 0x20, 0x10000)  # an 8-byte access
    op(W1, 0x14, 0)  # reset
    write("virtio_pci", "driver-init", u64(1 << 32 | 1 << 28) + u8(1) + b"".join(ops))


def vfio_config():
    cfg = bytearray(256)
    cfg[0:4] = u16(0x1b36) + u16(0x0010)
    cfg[4:8] = u16(0x0006) + u16(0x0010)  # command; status: capability list
    cfg[8:12] = u32(0x01080202)
    cfg[0x10:0x14] = u32(0x4)  # BAR0: 64-bit memory
    cfg[0x18:0x1c] = u32(0x0)
    cfg[0x34] = 0x40
    cfg[0x40:0x4c] = u8(0x11) + u8(0x50) + u16(0x0003) + u32(0x2000) + u32(0x3000)  # MSI-X
    cfg[0x50:0x5e] = u8(0x05) + u8(0x60) + u16(0x0080) + bytes(10)  # MSI, 64-bit
    cfg[0x60:0x68] = u8(0x10) + u8(0) + u16(0x0002) + bytes(4)  # PCIe
    sizes = bytes([14, 0, 12, 0, 0, 0])
    addrs = u64(0x1_0000_0000) + u64(0xe000_0000)
    ops = b"".join([
        u8(0x80) + u8(1) + u32(0x0406) + u32(0),  # command
        u8(0x80) + u8(4) + u32(0xffffffff) + u32(0),  # BAR0 sizing
        u8(0x60) + u8(16) + u32(0xc003) + u32(0),  # MSI-X message control (bytes 2-3)
        u8(0x80) + u8(20) + u32(0x0081) + u32(0),  # MSI control
        u8(0x80) + u8(21) + u32(0xfee00000) + u32(0),
        u8(0x81) + u8(16) + u32(0) + u16(0),  # reads
        u8(0x81) + u8(4) + u32(0) + u16(0),
        u8(0x80) + u8(12) + u32(0xfffff800) + u32(0),  # ROM
    ])
    write("vfio_config", "msix-msi-pcie", bytes(cfg) + sizes + u8(1) + addrs + ops)


def vhost_user(backend, name, queues):
    frames = []

    def msg(req, body=b"", flags=0):
        frames.append(u8(req) + u8(flags) + u8(len(body)) + body)

    msg(1, flags=0)  # GET_FEATURES
    msg(3)  # SET_OWNER
    msg(15)  # GET_PROTOCOL_FEATURES
    msg(16, u64(0x1 | 0x2 | 0x8 | 0x200 | 0x1000))  # MQ, LOG_SHMFD, REPLY_ACK, CONFIG, INFLIGHT_SHMFD
    msg(17)  # GET_QUEUE_NUM
    msg(2, u64(1 << 32 | 1 << 30 | 1 << 29 | 1 << 28), flags=8)  # SET_FEATURES + need reply
    uaddr = 0x7f00_0000_0000
    msg(5, u32(1) + u32(0) + u64(0) + u64(0x100000) + u64(uaddr) + u64(0))  # SET_MEM_TABLE
    msg(24, u32(0) + u32(12) + u32(0) + bytes(12))  # GET_CONFIG
    msg(31, u64(0) + u64(0) + u16(queues) + u16(64) + bytes(4))  # GET_INFLIGHT_FD
    msg(32, u64(0x1000) + u64(0) + u16(queues) + u16(64) + bytes(4))  # SET_INFLIGHT_FD
    for q in range(queues):
        base = uaddr + 0x10000 * (q + 1)
        msg(8, u32(q) + u32(64))  # SET_VRING_NUM
        msg(9, u32(q) + u32(0) + u64(base) + u64(base + 0x2000) + u64(base + 0x1000) + u64(0))
        msg(10, u32(q) + u32(0))  # SET_VRING_BASE
        msg(13, u64(q))  # SET_VRING_CALL
        msg(14, u64(q))  # SET_VRING_ERR
        msg(12, u64(q))  # SET_VRING_KICK
        msg(18, u32(q) + u32(1))  # SET_VRING_ENABLE
    for q in range(queues):
        msg(11, u32(q) + u32(0))  # GET_VRING_BASE
    msg(37, u64(0) + u64(0x200000) + u64(0x1000) + u64(0x7f10_0000_0000) + u64(0))  # ADD_MEM_REG
    msg(38, u64(0) + u64(0x200000) + u64(0x1000) + u64(0x7f10_0000_0000) + u64(0))  # REM_MEM_REG
    msg(36)  # GET_MAX_MEM_SLOTS
    msg(4)  # RESET_OWNER
    write("vhost_user", name, u8(backend) + b"".join(frames))


def inflight():
    qs, n = 16, 2
    per_queue = -(-(16 * qs + 16) // 64) * 64
    region = bytearray(per_queue * n)
    for q in range(n):
        base = q * per_queue
        region[base + 8:base + 16] = u16(1) + u16(qs) + u16(3) + u16(5)
        for head, counter in [(3, 1), (7, 2), (9, 3)]:
            e = base + 16 + 16 * head
            region[e] = 1
            region[e + 8:e + 16] = u64(counter)
    msg = u32(len(region)) + u16(0) + u16(n) + u16(qs)
    write("inflight", "two-queues", msg + u32(len(region)) + u16(5) + u16(qs) + bytes(64) + bytes(region))
    write("inflight", "fresh", msg + u32(len(region)) + u16(0) + u16(qs) + bytes(64))


virtio_blk()
virtio_net()
nvme()
e1000()
virtio_pci()
vfio_config()
vhost_user(0, "blk-session", 2)
vhost_user(1, "net-session", 5)
inflight()
