"""The loops of a kernel's SASS, for reading what ptxas made of a Triton kernel without a GPU.

PTX (from `scripts/flash_compile_check.py --dump DIR`) -> ptxas (sm_90a) -> nvdisasm; each loop (a backward
branch over at least 60 instructions) is printed with its size, the counts of the instructions that matter
for attention (HGMMA, MUFU, spills, copies), and the order of its wgmma / wait / exp2 / barrier instructions,
runs compressed (`HGMMA MUFU.EX2x5 HGMMA ...` is the exponentials interleaved with a product's wgmmas).
--timeline prints every such instruction of one loop with the instruction mix between them.

    python scripts/sass_loops.py DIR/000__bwd_dkdv_kernel.ptx [more.ptx] [--timeline 0]

ptxas and nvdisasm come with Triton's NVIDIA backend (or set PTXAS_DIR).
"""
import argparse
import collections
import glob
import os
import re
import subprocess
import sys

MARKS = ("HGMMA", "WARPGROUP", "BAR.", "MUFU", "LDL", "STL", "LDGSTS")
_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/")
_PRED = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?")


def ptxas_tools():
    """(ptxas, nvdisasm): those in $PTXAS_DIR, else the ptxas the installed Triton itself runs for sm_90 (3.6: its
    `ptxas`; 3.9: its `ptxas-blackwell`, CUDA 13, whose PTX the older one cannot read) and the nvdisasm beside it."""
    d = os.environ.get("PTXAS_DIR")
    if d:
        return os.path.join(d, "ptxas"), os.path.join(d, "nvdisasm")
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90).path
    return ptxas, os.path.join(os.path.dirname(ptxas), "nvdisasm")


def sass(ptx: str) -> list[str]:
    ptxas, nvdisasm = ptxas_tools()
    cubin = ptx[:-4] + ".cubin"
    subprocess.run([ptxas, "-arch=sm_90a", ptx, "-o", cubin], check=True, capture_output=True)
    return subprocess.run([nvdisasm, "-c", cubin], check=True, capture_output=True, text=True).stdout.splitlines()


def opcode(line: str) -> str:
    return _PRED.sub("", line).split()[0].rstrip(";")


def loops(raw: list[str], min_len: int = 60):
    """(start, end) instruction indices of each backward branch's loop body."""
    label_at, instrs, idx = {}, [], -1
    for line in raw:
        if _LINE.match(line):
            idx += 1
            instrs.append(line)
        m = re.match(r"(\.L_x_\d+):", line.strip())
        if m:
            label_at[m.group(1)] = idx + 1
    found = []
    for i, line in enumerate(instrs):
        m = re.search(r"BRA[^`]*`\((\.L_x_\d+)\)", line)
        start = label_at.get(m.group(1)) if m else None
        if start is not None and start <= i and i - start >= min_len:
            found.append((start, i))
    return instrs, found


def summary(body: list[str]) -> tuple[str, str]:
    ops = collections.Counter(opcode(l).split(".")[0] for l in body)
    counts = " ".join(f"{k} {ops[k]}" for k in ("HGMMA", "MUFU", "FFMA", "FMUL", "FADD", "F2FP", "LDGSTS", "STL", "LDL"))
    seq = []
    for line in body:
        op = opcode(line)
        if op.startswith(MARKS):
            key = "HGMMA" if op.startswith("HGMMA") else op
            if seq and seq[-1][0] == key:
                seq[-1][1] += 1
            else:
                seq.append([key, 1])
    return counts, " ".join(f"{k}x{n}" if n > 1 else k for k, n in seq)


def timeline(body: list[str]) -> list[str]:
    out, between = [], collections.Counter()
    for line in body:
        op = opcode(line)
        if op.startswith(MARKS[:-1]):
            if between:
                out.append("  (" + " ".join(f"{k} {v}" for k, v in between.most_common(6)) + ")")
                between.clear()
            out.append(op.split(".")[0] if op.startswith("HGMMA") else op)
        else:
            between[op.split(".")[0]] += 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ptx", nargs="+")
    ap.add_argument("--timeline", type=int, default=None, help="print this loop (0 = first) instruction by instruction")
    a = ap.parse_args()
    for path in [p for pattern in a.ptx for p in sorted(glob.glob(pattern))]:
        instrs, found = loops(sass(path))
        print(f"== {os.path.basename(path)}: {len(instrs)} instructions, {len(found)} loops")
        for n, (start, end) in enumerate(found):
            counts, seq = summary(instrs[start:end + 1])
            print(f" loop {n}: {end - start + 1} instructions; {counts}\n   {seq}")
            if a.timeline == n:
                print("\n".join("     " + t for t in timeline(instrs[start:end + 1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
