#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/): well-formed inputs each
target starts from, so the fuzzer begins inside the interesting states
(a valid virtio-blk request, a console chain, a driver's initialisation
sequence, protocol frames, small layer tars). Run from anywhere."""
import io, json, os, struct, tarfile

here = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

NEXT, WRITE = 1, 2

def memory(writes, size=0xA000):
    mem = bytearray(size)
    for addr, data in writes:
        mem[addr:addr + len(data)] = data
    return bytes(mem)

def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)

def avail(heads):
    return struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)

# virtio-blk: queue 0 at 0 (descriptors), 0x1000 (avail), 0x2000 (used).
def blk(kind, sector, data_len, data_flags):
    table = desc(0x4000, 16, NEXT, 1) + desc(0x5000, data_len, data_flags | NEXT, 2) + desc(0x6000, 1, WRITE, 0)
    header = struct.pack("<IIQ", kind, 0, sector)
    return memory([(0, table), (0x1000, avail([0])), (0x4000, header), (0x5000, b"\xab" * data_len)])

put("virtio_blk", "read", blk(0, 0, 512, WRITE))
put("virtio_blk", "write", blk(1, 3, 1024, 0))
put("virtio_blk", "get_id", blk(8, 0, 20, WRITE))
flush = desc(0x4000, 16, NEXT, 1) + desc(0x6000, 1, WRITE, 0)
put("virtio_blk", "flush", memory([(0, flush), (0x1000, avail([0])), (0x4000, struct.pack("<IIQ", 4, 0, 0))]))
# An indirect table (flag 4) with the same three descriptors at 0x7000.
indirect = desc(0x7000, 48, 4, 0)
put("virtio_blk", "indirect", memory([(0, indirect), (0x1000, avail([0])), (0x7000, desc(0x4000, 16, NEXT, 1) + desc(0x5000, 512, WRITE | NEXT, 2) + desc(0x6000, 1, WRITE, 0)), (0x4000, struct.pack("<IIQ", 0, 0, 0))]))

# virtio-console: receive queue 0 at 0, transmit queue 1 at 0x3000.
rx = desc(0x9000, 64, WRITE, 0)
tx = desc(0x8000, 5, 0, 0) + desc(0x8100, 3, NEXT, 2) + desc(0x8200, 4, 0, 0)
put("virtio_console", "tx_and_rx", memory([(0, rx), (0x1000, avail([0])), (0x3000, tx), (0x4000, avail([0, 1])), (0x8000, b"hello"), (0x8100, b"abc"), (0x8200, b"defg")]))

# virtio-mmio: a driver's initialisation, as (kind, offset, value) steps:
# kind bit 0 = write, bits 1-2 = width index (2 = 4 bytes).
def step(write, offset, value=0, width=2):
    return struct.pack("<BHI", (width << 1) | int(write), offset, value & 0xffffffff)
init = b"".join([
    step(0, 0x000), step(0, 0x004), step(0, 0x008), step(0, 0x00c),
    step(1, 0x070, 1), step(1, 0x070, 3),
    step(1, 0x014, 1), step(0, 0x010), step(1, 0x024, 1), step(1, 0x020, 1),
    step(1, 0x024, 0), step(1, 0x020, 0), step(1, 0x070, 0xb), step(0, 0x070),
    step(1, 0x030, 0), step(0, 0x034), step(1, 0x038, 16),
    step(1, 0x080, 0), step(1, 0x084, 0), step(1, 0x090, 0x1000), step(1, 0x094, 0),
    step(1, 0x0a0, 0x2000), step(1, 0x0a4, 0), step(1, 0x044, 1),
    step(1, 0x030, 1), step(1, 0x038, 16), step(1, 0x080, 0x3000), step(1, 0x090, 0x4000),
    step(1, 0x0a0, 0x5000), step(1, 0x044, 1),
    step(1, 0x070, 0xf), step(1, 0x050, 0), step(0, 0x060), step(1, 0x064, 1),
    step(0, 0x100, 0, 0), step(0, 0x0fc), step(1, 0x070, 0),
])
put("virtio_mmio", "driver_init", init)

# Agent frames: header (magic, kind, stream, id, len) + payload; the first
# input byte is the read size minus one.
def frame(kind, stream, ident, payload):
    return struct.pack(">HBBII", 0x484B, kind, stream, ident, len(payload)) + payload
hello = frame(1, 0, 0, json.dumps({"protocol_version": 2, "agent_version": "0.1.0"}).encode())
data = frame(5, 2, 1, b"hello, world\n") + frame(6, 1, 1, struct.pack(">I", 4096)) + frame(7, 3, 1, b"")
response = frame(3, 0, 7, json.dumps({"error": {"step": "mount", "message": "EPERM"}}).encode())
event = frame(4, 0, 0, json.dumps({"process_exited": {"process": 1, "status": {"code": 0, "signal": None}}}).encode())
put("agent_frames", "hello_then_data", b"\x07" + hello + data)
put("agent_frames", "response_event", b"\xff" + response + event)
put("agent_frames", "bytewise", b"\x00" + hello + data)
remove = frame(2, 0, 9, json.dumps({"remove_container": {"container": "member-1"}}).encode())
start = frame(2, 0, 10, json.dumps({"start": {"container": "member-1"}}).encode())
put("agent_frames", "pod_requests", b"\x1f" + remove + start)

# Layer tars.
def tar(members):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()
def entry(name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)
put("layer_unpack", "basic", tar([entry("etc", tarfile.DIRTYPE, mode=0o755), entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
    entry("bin", tarfile.DIRTYPE, mode=0o755), entry("bin/sh", data=b"\x7fELF", mode=0o755), entry("bin/ash", tarfile.SYMTYPE, link="sh"),
    entry("bin/hard", tarfile.LNKTYPE, link="bin/sh")]))
put("layer_unpack", "whiteouts", tar([entry("a", tarfile.DIRTYPE, mode=0o755), entry("a/.wh.gone", data=b""), entry("a/.wh..wh..opq", data=b"")]))
put("layer_unpack", "symlink_parent", tar([entry("real", tarfile.DIRTYPE, mode=0o755), entry("link", tarfile.SYMTYPE, link="real"), entry("link/file", data=b"x")]))
put("layer_unpack", "escape_attempt", tar([entry("up", tarfile.SYMTYPE, link="../.."), entry("up/evil", data=b"x"), entry("../evil2", data=b"y")]))
