"""A disk image survives lgemu being killed at any moment: only whole writes, and every write
the guest saw complete.

The guest writes sectors 0 … N-1 of its disk over and over, round after round, one request
at a time, each a BARRIER write (ABI §12.2) of a pattern naming the sector and the round, and
prints ``<sector><round>`` on the console once the request has come back OK.  The test kills
lgemu after a pseudo-random number of acknowledgements — with SIGKILL (nothing runs after it)
and with SIGTERM (lgemu closes its devices and exits 143) — and reads the image:

* every sector is either untouched or holds one whole pattern for *that* sector (never a torn
  mix, never another sector's data);
* a sector whose write was acknowledged holds that round or the next one (the request in
  flight when the kill came may or may not have landed), never an older round.
"""

from __future__ import annotations

import random
import signal
import struct
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT
from guestasm import build_guest
from virtioasm import DEVPT_BSS, MACROS, USED, map_device_pages, ring

SECTORS = 16
SECTOR = 512
UNTOUCHED = b"\xee" * SECTOR
BLK = ring(0)  # --block comes first: its queue is queue 0, the console's follow (ABI §10.3)
OUT_BARRIER = 0x80000001  # VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_BARRIER

WRITER = rf"""
	INIT
{map_device_pages(3)}
	movl	$1, round
1:	xorl	%esi, %esi			/* sector */
2:	movl	round, %eax			/* the pattern: (round << 16 | sector) x 128 */
	shll	$16, %eax
	orl	%esi, %eax
	movl	$data, %edi
	movl	${SECTOR // 4}, %ecx
	rep stosl
	movl	${OUT_BARRIER:#x}, hdr
	movl	%esi, hdr+8
	movb	$0xff, status
	DESC	{BLK:#x}, 0, $hdr, $24, $1, $1
	DESC	{BLK:#x}, 1, $data, ${SECTOR}, $1, $2
	DESC	{BLK:#x}, 2, $status, $1, $2, $0
	POST	{BLK:#x}, $0
	KICK	{BLK:#x}
	incl	requests
	movl	requests, %ebx
3:	cmpw	%bx, {BLK + USED + 2:#x}		/* served before the kick returns, but check */
	jne	3b
	cmpb	$0, status
	jne	failed
	PUTHEX	%esi				/* acknowledged: sector, round */
	PUTHEX	round
	NEWLINE
	incl	%esi
	cmpl	${SECTORS}, %esi
	jb	2b
	incl	round
	jmp	1b
failed:
	CRASH	msg_failed
"""
WRITER_DATA = r"""
	.balign	16
hdr:	.fill	24, 1, 0
status:	.byte	0
	.balign	16
data:	.fill	512, 1, 0
round:	.long	0
requests: .long	0
msg_failed: .asciz "a barrier write failed"
""" + DEVPT_BSS


def pattern(sector: int, round_: int) -> bytes:
    return struct.pack("<I", (round_ & 0xFFFF) << 16 | sector) * (SECTOR // 4)


def acknowledged(out: bytes) -> dict[int, int]:
    """sector → last acknowledged round, from the complete lines of the console."""
    acks: dict[int, int] = {}
    for line in out.split(b"\n")[:-1]:  # a line cut by the kill does not count
        if len(line) == 16:
            sector, round_ = int(line[:8], 16), int(line[8:], 16)
            acks[sector] = round_
    return acks


# (signal, acknowledgements to wait for): a few early, some in the middle of a round, some
# after many rounds; the counts are fixed pseudo-random picks so every run tests the same.
_rng = random.Random(20080124)
KILLS = [(sig, _rng.randint(1, 400)) for sig in (signal.SIGKILL, signal.SIGTERM) * 4]


@pytest.mark.parametrize(("sig", "after"), KILLS,
                         ids=[f"{signal.Signals(s).name}-after-{n}" for s, n in KILLS])
def test_a_killed_run_leaves_only_whole_acknowledged_writes(tmp_path, sig, after):
    image = tmp_path / "disk.img"
    image.write_bytes(UNTOUCHED * SECTORS)
    elf = build_guest(tmp_path, MACROS + WRITER, WRITER_DATA)
    proc = subprocess.Popen([sys.executable, "-m", "lgemu", "boot", str(elf), "--block",
                             str(image)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    try:
        while out.count(b"\n") < after:
            chunk = proc.stdout.read1(65536)
            assert chunk, (proc.wait(), proc.stderr.read())
            out += chunk
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out += rest
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
        assert err.decode() == "lgemu: terminated by SIGTERM\n"
    else:
        assert proc.returncode == -signal.SIGKILL

    acks = acknowledged(out)
    assert len(acks) == min(SECTORS, after)  # we saw `after` acknowledgements before the kill
    data = image.read_bytes()
    assert len(data) == SECTORS * SECTOR  # never grown or cut
    for sector in range(SECTORS):
        got = data[sector * SECTOR:(sector + 1) * SECTOR]
        acked = acks.get(sector, 0)
        if got == UNTOUCHED:
            assert acked == 0, f"sector {sector}: round {acked} was acknowledged, not on disk"
            continue
        round_ = struct.unpack_from("<I", got)[0] >> 16
        assert got == pattern(sector, round_), f"sector {sector} is torn or misplaced"
        assert acked <= round_ <= acked + 1, (sector, acked, round_)
