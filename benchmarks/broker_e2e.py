"""Broker end to end: HTTP ingress -> SQLite log -> CESQL Trigger -> HTTP sink, vs a bare forwarder.

What is measured: a load generator POSTs binary-mode CloudEvents to a system
under test, which gets them to an HTTP sink that counts them. Two systems, in
the same run, between the same generator and the same sink:

* **forwarder**: a bare aiohttp app that receives each POST and forwards it
  to the sink over a pooled keep-alive session, answering with the sink's
  status: no log, no filter, no parsing. The floor for an HTTP hop in Python.
* **headwater**: the Broker ingress (full CloudEvent decode and validation),
  a SQLite event log at ``normal`` durability (202 only once appended), one
  Trigger with a CESQL filter, ``ordered`` delivery per ``partitionkey``, and
  the :class:`~headwater.eventing.HttpSink` (binary mode, ``Prefer: reply``).

The generator, the system under test and the sink are three processes (the
system under test gets a core of its own as far as two cores allow). Each
generator worker owns some devices and sends each device's events one at a
time, so a device's order at the ingress is its send order; the sink checks
that every device's sequence arrives gap-free and in order (no loss, no
reordering) and measures latency from the generator's send time (an
extension) to arrival. Each system is measured at full load (``--concurrency``
workers as fast as they can) and at 50% of its own full-load rate.

Run: ``.venv/bin/python benchmarks/broker_e2e.py [--seconds S] [--concurrency C] [--repeat R]
[--gc default|freeze]``.
Prints events/s and p50/p99 latency of every run, then the best round of each
system (the machine is shared; the least disturbed round is the one closest to
what the code can do) and the ratio headwater/forwarder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

DEVICES = 256
"""Distinct ``partitionkey`` values (the ordering unit); spread over the workers."""

FILTER = "type LIKE 'bench.%' AND source = '/bench/gateway' AND benchseq >= 0"
"""The Trigger's CESQL filter: every generated event matches it (all of them are delivered)."""

PREFIX_FILTER = {"prefix": {"type": "bench."}}
"""The same selection without CESQL (``--filter prefix``), to see what the CESQL engine costs."""

_ORDER_HEADER = "ce-benchseq"
_DRAIN_POLL = 0.02


# -- the sink (its own process) -------------------------------------------------------


def run_sink() -> None:
    """Count events; record latency; check per-device order. GET /stats, POST /reset."""
    state: dict[str, Any] = {}

    def reset() -> None:
        # Per-device positions are kept: a measured run continues its warm-up's sequences.
        state.update(count=0, latencies=[], gaps=0, reorders=0, duplicates=0)

    state["last"] = {}
    reset()

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        now = time.time()
        headers = request.headers
        state["count"] += 1
        state["latencies"].append(now - float(headers["ce-benchsent"]))
        device = headers["ce-partitionkey"]
        seq = int(headers[_ORDER_HEADER])
        last = state["last"].get(device, -1)
        if seq == last + 1:
            state["last"][device] = seq
        elif seq <= last:
            state["duplicates" if seq == last else "reorders"] += 1
        else:
            state["gaps"] += 1
            state["last"][device] = seq
        return web.Response(status=202)

    async def stats(request: web.Request) -> web.Response:
        lat = sorted(state["latencies"])
        return web.json_response(
            {
                "count": state["count"],
                "gaps": state["gaps"],
                "reorders": state["reorders"],
                "duplicates": state["duplicates"],
                "p50": _percentile(lat, 0.50),
                "p99": _percentile(lat, 0.99),
            }
        )

    async def do_reset(request: web.Request) -> web.Response:
        reset()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/", receive)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", do_reset)
    asyncio.run(_serve_async(app))


# -- the systems under test (each its own process) ------------------------------------


def run_forwarder(sink_url: str) -> None:
    async def main() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            async with session.post(
                sink_url, data=body, headers=request.headers, skip_auto_headers=("Content-Type",)
            ) as response:
                await response.read()
                return web.Response(status=response.status)

        app = web.Application()
        app.router.add_post("/{namespace}/{name}", forward)
        try:
            await _serve_async(app)
        finally:
            await session.close()

    asyncio.run(main())


def run_headwater(
    sink_url: str, data_dir: str, dialect: str, commit_window: str, gc_mode: str
) -> None:
    from headwater.eventing import AiohttpTransport, Broker, HttpSink, Ingress, Trigger, new_session
    from headwater.log import EARLIEST
    from headwater.log.sqlite import SqliteLog

    async def main() -> None:
        async with (
            await SqliteLog.open(
                Path(data_dir) / "bench.db",
                durability="normal",
                commit_window=float(commit_window),
            ) as log,
            Broker("default", "bench", log) as broker,
            new_session() as session,
        ):
            await broker.add_trigger(
                Trigger(
                    "counter",
                    HttpSink(sink_url, transport=AiohttpTransport(session)),
                    filters=[{"cesql": FILTER} if dialect == "cesql" else PREFIX_FILTER],
                    ordering="ordered",
                    start=EARLIEST,
                )
            )
            ingress = Ingress(lambda ns, name: broker)
            if gc_mode == "freeze":
                # What `headwater up` does once started (api/server.py): the
                # process's long-lived objects, imports included, leave the
                # collector's view, so full collections under load stop
                # rescanning them.
                gc.collect()
                gc.freeze()
            await _serve_async(ingress.app())

    asyncio.run(main())


async def _serve_async(app: web.Application) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


# -- the generator (the main process) -----------------------------------------------


@dataclass
class Run:
    name: str
    load: str
    sent: int
    accepted: int
    delivered: int
    seconds: float
    p50: float
    p99: float
    gaps: int
    reorders: int
    duplicates: int

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _headers(tag: str, device: int, seq: int) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": f"{tag}-{device}-{seq}",
        "ce-source": "/bench/gateway",
        "ce-type": "bench.reading",
        "ce-time": "2026-11-28T12:00:00Z",
        "ce-partitionkey": f"{tag}-device-{device}",
        "ce-benchseq": str(seq),
        "ce-benchsent": repr(time.time()),
        "content-type": "application/json",
    }


async def generate(
    url: str,
    tag: str,
    concurrency: int,
    seconds: float,
    rate: float | None,
    start_seq: dict[int, int],
) -> tuple[int, int]:
    """Post for ``seconds``; each worker sends its devices' events one at a time.

    Without ``rate``, as fast as possible; with it, paced to ``rate`` events/s
    in total. Returns (sent, accepted with 202).
    """
    sent = accepted = 0
    body = orjson.dumps({"device": "greenhouse-7", "metric": "temperature", "value": 21.5})
    connector = aiohttp.TCPConnector(limit=concurrency)
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(w: int) -> None:
            nonlocal sent, accepted
            devices = [d for d in range(DEVICES) if d % concurrency == w]
            k = 0
            interval = concurrency / rate if rate else 0.0
            next_at = time.monotonic() + (w / rate if rate else 0.0)
            while time.monotonic() < deadline:
                device = devices[k % len(devices)]
                k += 1
                seq = start_seq.get(device, 0)
                if rate:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at += interval
                sent += 1
                async with session.post(url, data=body, headers=_headers(tag, device, seq)) as r:
                    await r.read()
                    if r.status == 202:
                        accepted += 1
                        start_seq[device] = seq + 1
                    else:
                        # Not accepted: the same seq is sent again next time, so the
                        # sink's order check stays exact.
                        await asyncio.sleep(0.01)

        await asyncio.gather(*(worker(w) for w in range(min(concurrency, DEVICES))))
    return sent, accepted


@contextlib.asynccontextmanager
async def child(role: str, *args: str) -> AsyncIterator[int]:
    """Run this script as ``role`` in a child process; yield the port it listens on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, role, *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.startswith(b"PORT "):
            raise SystemExit(f"{role} did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


async def sink_stats(http: aiohttp.ClientSession, sink: str) -> dict[str, Any]:
    async with http.get(sink + "stats") as r:
        return dict(await r.json())


async def measure(
    name: str, url: str, sink: str, args: argparse.Namespace, rate: float | None, round_: int
) -> Run:
    tag = f"{name}-{'full' if rate is None else 'half'}-{round_}"
    async with aiohttp.ClientSession() as http:
        seqs: dict[int, int] = {}
        async with http.post(sink + "reset") as r:
            await r.read()
        # Warm up (connections, caches, the log file), then start counting afresh;
        # the device sequences carry on, so the order check spans both.
        await generate(url, tag, args.concurrency, 1.0, rate, seqs)
        await _drain(http, sink, sum(seqs.values()), reset=True)
        started = time.monotonic()
        sent, accepted = await generate(url, tag, args.concurrency, args.seconds, rate, seqs)
        stats = await _drain(http, sink, accepted)
        # Delivered events over the time it took to deliver them: a backlog
        # left at the end of the load counts against the rate.
        elapsed = time.monotonic() - started
        return Run(
            name=name,
            load="full" if rate is None else f"{rate:,.0f}/s",
            sent=sent,
            accepted=accepted,
            delivered=stats["count"],
            seconds=max(elapsed - _DRAIN_POLL, args.seconds),
            p50=stats["p50"] * 1000,
            p99=stats["p99"] * 1000,
            gaps=stats["gaps"],
            reorders=stats["reorders"],
            duplicates=stats["duplicates"],
        )


async def _drain(
    http: aiohttp.ClientSession, sink: str, expected: int, *, reset: bool = False
) -> dict[str, Any]:
    """Wait until the sink has seen ``expected`` events (or stops making progress)."""
    last, still = -1, 0
    while True:
        stats = await sink_stats(http, sink)
        if stats["count"] >= expected:
            if reset:
                async with http.post(sink + "reset") as r:
                    await r.read()
            return stats
        still = still + 1 if stats["count"] == last else 0
        if still > 250:  # 5 s without progress: report what arrived
            return stats
        last = stats["count"]
        await asyncio.sleep(_DRAIN_POLL)


def report(runs: list[Run], *, header: bool = True) -> None:
    if header:
        print(
            f"{'system':<11}{'load':>10}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'sent':>9}{'202':>9}{'delivered':>10}  lost/reordered/dup"
        )
    for r in runs:
        lost = r.accepted - r.delivered + r.duplicates
        print(
            f"{r.name:<11}{r.load:>10}{r.rate:>10,.0f}{r.p50:>9.1f}{r.p99:>9.1f}"
            f"{r.sent:>9}{r.accepted:>9}{r.delivered:>10}  "
            f"{max(lost, 0)}/{r.reorders + r.gaps}/{r.duplicates}",
            flush=True,
        )


async def main_async(args: argparse.Namespace) -> None:
    if args.filter == "cesql":
        from headwater.eventing import FilterError, compile_filters

        try:
            compile_filters([{"cesql": FILTER}])
        except FilterError as exc:
            raise SystemExit(f"{exc}; run with --filter prefix to measure without CESQL") from exc
    print(
        f"{args.concurrency} generator workers over {DEVICES} devices, {args.seconds:g} s per run, "
        f"{args.repeat} round(s); cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
        f"gc: {args.gc}; "
        f"Trigger filter: {FILTER if args.filter == 'cesql' else PREFIX_FILTER!r}"
    )
    runs: list[Run] = []
    report([])
    async with child("sink") as sink_port, contextlib.AsyncExitStack() as stack:
        sink = f"http://127.0.0.1:{sink_port}/"
        urls: dict[str, str] = {}
        for name in ("forwarder", "headwater"):
            data_dir = stack.enter_context(tempfile.TemporaryDirectory())
            extra = (
                [sink]
                if name == "forwarder"
                else [sink, data_dir, args.filter, str(args.commit_window), args.gc]
            )
            port = await stack.enter_async_context(child(name, *extra))
            urls[name] = f"http://127.0.0.1:{port}/default/bench"
        # Rounds alternate the systems, so that both see the same (shared) machine.
        for round_ in range(args.repeat):
            for name, url in urls.items():
                full = await measure(name, url, sink, args, None, round_)
                half = await measure(name, url, sink, args, full.rate / 2, round_)
                runs += (full, half)
                report([full, half], header=False)
    # The best round of each system: on a shared machine, the least disturbed one.
    best = {
        name: max((r for r in runs if r.name == name and r.load == "full"), key=lambda r: r.rate)
        for name in urls
    }
    calm = {
        name: min((r for r in runs if r.name == name and r.load != "full"), key=lambda r: r.p99)
        for name in urls
    }
    fwd, hw = best["forwarder"], best["headwater"]
    problems = sum(r.accepted - r.delivered + r.duplicates + r.gaps + r.reorders for r in runs)
    print(
        f"\nbest full load: forwarder {fwd.rate:,.0f}/s "
        f"(p50 {fwd.p50:.1f} ms, p99 {fwd.p99:.1f} ms), "
        f"headwater {hw.rate:,.0f}/s (p50 {hw.p50:.1f} ms, p99 {hw.p99:.1f} ms)"
        f"\nheadwater / forwarder: x{hw.rate / fwd.rate:.2f} (target >= 0.5)"
        f"\nbest p99 at 50% load: forwarder {calm['forwarder'].p99:.1f} ms, "
        f"headwater {calm['headwater'].p99:.1f} ms (target < 50 ms)"
        f"\nlost + duplicated + reordered events over all runs: {problems} (target 0)"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("sink", "forwarder", "headwater"):
        role, *rest = sys.argv[1:]
        if role == "sink":
            run_sink()
        elif role == "forwarder":
            run_forwarder(*rest)
        else:
            run_headwater(*rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--filter", choices=("cesql", "prefix"), default="cesql")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is reported")
    parser.add_argument(
        "--commit-window",
        type=float,
        default=0.0,
        help="SqliteLog commit_window in seconds (0: the default, commit at once)",
    )
    parser.add_argument(
        "--gc",
        choices=("default", "freeze"),
        default="freeze",
        help="headwater process: gc.freeze() once started, as `headwater up` does (freeze), "
        "or the collector untouched (default)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
