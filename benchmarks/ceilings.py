"""The two ceilings every floor is computed from, measured on the machine at hand: the matmul
rate and the device-memory bandwidth (plus ``sync``, to time GPU work honestly).

    from ceilings import ceilings, matmul_peak, sync      # benchmarks put their folder on sys.path
"""

from __future__ import annotations

import time

import torch


def sync(device) -> None:
    """Wait for the GPU work: of that GPU, or of every GPU for plain "cuda" (a sharded model)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        for i in [dev.index] if dev.index is not None else range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def matmul_peak(device, dtype) -> float:
    """Measured dense matmul throughput (FLOP/s) for this device and dtype."""
    n = 8192 if torch.device(device).type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 50 if torch.device(device).type == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def copy_bandwidth(device) -> float:
    """Measured device-memory bandwidth (bytes/s), counting bytes read plus bytes written."""
    n = 2 * 1024**3 if torch.device(device).type == "cuda" else 256 * 1024**2
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(device)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    sync(device)
    return 2 * n * reps / (time.perf_counter() - t)


def ceilings(device, dtype) -> tuple[float, float]:
    """(bandwidth in bytes/s, matmul FLOP/s), both measured now."""
    return copy_bandwidth(device), matmul_peak(device, dtype)
