"""`headwater up` cold start to ready, against the floor: a bare aiohttp server.

Both run as fresh processes, one after the other, N times each, in the same
run; the time is from spawn to the moment the process says it listens (for
Headwater: after the resources are applied, the SQLite log is open and every
listener is bound). Prints the median and p90 for each, and the ratio.
Target: Headwater under 2 s on the embedded defaults.

    .venv/bin/python benchmarks/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_AIOHTTP = """
import asyncio, sys
from aiohttp import web
async def main():
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def time_to_ready(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.strip() == "ready":
                return time.perf_counter() - started
        raise RuntimeError(f"{argv[:3]} exited before it was ready")
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


def summary(name: str, samples: list[float]) -> float:
    median = statistics.median(samples)
    p90 = sorted(samples)[max(0, int(len(samples) * 0.9) - 1)]
    print(f"{name:<28} median {median * 1000:7.0f} ms   p90 {p90 * 1000:7.0f} ms")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    peer: list[float] = []
    ours: list[float] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            peer.append(time_to_ready([sys.executable, "-c", BARE_AIOHTTP], Path(tmp)))
            ours.append(
                time_to_ready(
                    [
                        sys.executable,
                        "-m",
                        "headwater.cli",
                        "up",
                        "--http-port",
                        "0",
                        "--mqtt-port",
                        "0",
                    ],
                    Path(tmp),
                )
            )
    print(f"cold start to ready, {args.runs} runs each (fresh data directory every run)")
    base = summary("bare aiohttp server (floor)", peer)
    mine = summary("headwater up (defaults)", ours)
    print(f"ratio headwater/floor: {mine / base:.2f}x   target: headwater < 2000 ms")


if __name__ == "__main__":
    main()
