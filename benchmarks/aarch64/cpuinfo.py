#!/usr/bin/env python3
"""Print an arm64 /proc/cpuinfo for the CPU this (emulated) process runs on.

qemu-user before 8.1 passes the host's x86 /proc/cpuinfo through to the guest. The runtime's
CPU detection (pytorch/cpuinfo, used by XNNPACK) can't parse it: without /proc and /sys it
gives up and XNNPACK is not used at all; with the x86 file it crashes. run.sh runs this under
the emulator and shows the result to the runner as /proc/cpuinfo, as an arm64 kernel (and
qemu >= 8.1 itself) would: the features from the auxiliary vector (AT_HWCAP, AT_HWCAP2) and
the main ID register (MIDR_EL1, readable from EL0 where HWCAP_CPUID is set).

    python3 cpuinfo.py [NPROC]
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys

# Bit i of AT_HWCAP / AT_HWCAP2 -> name, as in Linux arch/arm64/include/uapi/asm/hwcap.h.
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
         "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm "
          "svef64mm svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 "
          "smei8i32 smef16f32 smeb16f32 smef32f32 smefa64 wfxt ebf16 sveebf16").split()
AT_HWCAP, AT_HWCAP2 = 16, 26


def hwcaps() -> tuple[int, int]:
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2)


def midr() -> int:
    """MIDR_EL1 via `mrs x0, midr_el1; ret` in an executable page."""
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(struct.pack("<II", 0xD5380000, 0xD65F03C0))
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    return ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)()


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else (os.cpu_count() or 1)
    h1, h2 = hwcaps()
    feats = [f for i, f in enumerate(HWCAP) if h1 >> i & 1] + [f for i, f in enumerate(HWCAP2) if h2 >> i & 1]
    m = midr() if "cpuid" in feats else 0
    for p in range(n):
        print(f"processor\t: {p}\nBogoMIPS\t: 100.00\nFeatures\t: {' '.join(feats)}\n"
              f"CPU implementer\t: 0x{m >> 24 & 0xff:02x}\nCPU architecture: 8\n"
              f"CPU variant\t: 0x{m >> 20 & 0xf:x}\nCPU part\t: 0x{m >> 4 & 0xfff:03x}\n"
              f"CPU revision\t: {m & 0xf}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
