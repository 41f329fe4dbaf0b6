"""Compare the supervisor's NVML sampler with nvidia-smi on a real GPU.

    PYTHONPATH=. python scripts/gpu_check.py [--gib 2] [--tolerance-mib 64]

Starts a child that holds `--gib` GiB on cuda:0 with PyTorch, samples once with
supervisor/gpu.py, and prints memory used/total per GPU and the child's memory from
both sides. Exit 0 when they agree within the tolerance, 1 when they differ, 2 when
the check cannot run (no GPU, no nvidia-smi, the child failed). Needs only stdlib,
nvidia-ml-py and torch; it kills only the child it started.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from supervisor.observe.gpu import GpuSample, GpuSampler

MIB = 1 << 20
CHILD = """
import sys, torch
x = torch.empty({n}, dtype=torch.uint8, device="cuda:0")
x.fill_(1)
torch.cuda.synchronize()
print("ready", flush=True)
sys.stdin.read()  # hold the memory until the parent closes our stdin
"""


def smi(query: str, fields: str) -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-{query}={fields}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def start_child(gib: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(n=int(gib * (1 << 30)))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # blocks until the allocation is done (or the child died)
    if line.strip() != "ready":
        child.kill()
        child.wait()
        raise RuntimeError(f"the torch child did not allocate (exit {child.poll()})")
    return child


def stop_child(child: subprocess.Popen[str]) -> None:
    if child.stdin is not None:
        child.stdin.close()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def compare(sample: GpuSample, child_pid: int, gib: float, tolerance_mib: float) -> bool:
    gpus = {int(i): (float(u), float(t))
            for i, u, t in smi("gpu", "index,memory.used,memory.total")}
    apps = {int(pid): float(m) for pid, m in smi("compute-apps", "pid,used_memory")
            if m.replace(".", "", 1).isdigit()}
    rows: list[tuple[str, float | None, float | None]] = []
    for d in sample.devices:
        used, total = gpus.get(d.index, (None, None))
        rows.append((f"GPU {d.index} memory.used MiB", d.memory_used_bytes / MIB, used))
        rows.append((f"GPU {d.index} memory.total MiB", d.memory_total_bytes / MIB, total))
    mine = [p.used_bytes for p in sample.processes if p.pid == child_pid]
    ours = sum(b for b in mine if b is not None) / MIB if mine else None
    rows.append((f"child pid {child_pid} used MiB", ours, apps.get(child_pid)))

    ok = True
    print(f"{'quantity':34} {'supervisor':>12} {'nvidia-smi':>12} {'diff':>8}")
    for name, a, b in rows:
        diff = None if a is None or b is None else a - b
        bad = diff is None or abs(diff) > tolerance_mib
        ok &= not bad
        cells = [f"{v:12.0f}" if v is not None else f"{'-':>12}" for v in (a, b)]
        print(f"{name:34} {cells[0]} {cells[1]} "
              f"{'' if diff is None else f'{diff:+.0f}':>8}{'  <-- differs' if bad else ''}")
    if ours is not None and ours < gib * 1024:
        print(f"child holds {ours:.0f} MiB, less than the {gib * 1024:.0f} MiB it allocated")
        ok = False
    if not mine:
        print("the child's PID is not in NVML's process list (another PID namespace?)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="memory the child allocates")
    parser.add_argument("--tolerance-mib", type=float, default=64.0,
                        help="largest difference accepted (memory moves between readings)")
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("no nvidia-smi on PATH", file=sys.stderr)
        return 2
    sampler = GpuSampler(lambda _service: None)
    first = sampler.sample_once()
    if not first.available:
        print(f"no GPU: {first.reason}", file=sys.stderr)
        return 2
    try:
        child = start_child(args.gib)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        time.sleep(1.0)  # let NVML's per-process accounting catch up
        sample = sampler.sample_once()
        ok = compare(sample, child.pid, args.gib, args.tolerance_mib)
    finally:
        stop_child(child)
        sampler.close()
    print("OK: supervisor and nvidia-smi agree" if ok else "FAIL: they differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
