"""Load on the inspection service: many POST /v1/detect requests at once against a real
`genad serve` (a child process on a free loopback port, with a token), then a check that every
inspection was stored exactly once.

    .venv/bin/python benchmarks/service_load.py [--requests 200] [--concurrency 8] [--workers 1]
                                                [--detector baseline] [--model | --no-model]

By default a stored `baseline` model is fitted once on the three examples/magnetic_tile
train/good images (POST /v1/models), and every request sends one of the seven test images
(113x287 to 502x308 px, cycled) with `model=ID`: predict, draw the heatmap and overlay, keep
them, add the row. That is what a station does all day, and it is CPU-feasible on 2 cores.
`--no-model` sends the three references with every request instead (fit + predict each time).

Reports throughput, client-side latency (p50, p95, max), the server's own `timings.total`,
errors by status; then reads GET /v1/inspections (all pages) and checks that the total grew by
exactly the number of successful requests and that the stored ids are exactly the ids answered,
each once. Writes benchmarks/results/service_load.{json,md}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "magnetic_tile"
OUT = ROOT / "benchmarks" / "results"


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for field, name, data in files:
        out += (
            (
                f'--{b}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    out += f"--{b}--\r\n".encode()
    return out, f"multipart/form-data; boundary={b}"


class Conn:
    """One keep-alive connection per client thread; reconnects if the service closed it."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.reconnects = 0

    def call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if ctype:
            headers["Content-Type"] = ctype
        for attempt in range(2):
            try:
                self.c.request(method, path, body=body, headers=headers)
                r = self.c.getresponse()
                raw = r.read()
                break
            except (ConnectionError, http.client.HTTPException):
                if attempt:
                    raise
                self.reconnects += 1
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode(errors="replace")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1, help="genad serve --workers (detections at once)")
    ap.add_argument("--detector", default="baseline")
    ap.add_argument("--model", action=argparse.BooleanOptionalAction, default=True, help="use a stored model")
    ap.add_argument("--out", type=Path, default=OUT / "service_load")
    args = ap.parse_args()

    train = sorted((DATA / "train" / "good").glob("*.jpg"))
    tests = sorted((DATA / "test").rglob("*.jpg"))
    images = [(p.name, p.read_bytes()) for p in tests]
    refs = [("normals", p.name, p.read_bytes()) for p in train]
    token = secrets.token_urlsafe(24)
    work = Path(tempfile.mkdtemp(prefix="genad-load-"))
    port = _free_port()
    env = {**os.environ, "GENAD_SERVICE_TOKEN": token}
    cmd = [sys.executable, "-m", "genad.cli.main", "serve", "--port", str(port), "--storage", str(work / "storage")]
    cmd += ["--workers", str(args.workers), "--log-level", "warning"]
    log = open(work / "service.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, (work / "service.log").read_text()
            try:
                status, d = Conn(port, token).call("GET", "/v1/detectors")
                if status == 200 and d["image_detectors"] is not None:
                    break
            except OSError:
                pass
            assert time.monotonic() - t0 < 120, "the service did not start"
            time.sleep(0.3)
        setup = Conn(port, token)
        fields = {"inline_png": "false"}
        model_info = None
        if args.model:
            body, ctype = _multipart({"name": "load-golden", "detector": args.detector}, refs)
            t = time.perf_counter()
            status, m = setup.call("POST", "/v1/models", body, ctype)
            assert status == 201, m
            model_info = {"id": m["id"], "fit_seconds": round(time.perf_counter() - t, 3), "references": len(refs)}
            fields["model"] = m["id"]
        else:
            fields["detector"] = args.detector
        total_before = setup.call("GET", "/v1/inspections?limit=1")[1]["total"]
        load_start = _load()

        local = threading.local()
        lock = threading.Lock()
        answered_ids: list[str] = []
        latencies: list[float] = []
        server_totals: list[float] = []
        statuses: Counter[int] = Counter()
        errors: list[str] = []
        conns: list[Conn] = []

        def one(i: int) -> None:
            if not hasattr(local, "conn"):
                local.conn = Conn(port, token)
                with lock:
                    conns.append(local.conn)
            name, data = images[i % len(images)]
            files = [("files", name, data)] + ([] if args.model else refs)
            body, ctype = _multipart(fields, files)
            t = time.perf_counter()
            try:
                status, d = local.conn.call("POST", "/v1/detect", body, ctype)
            except Exception as e:  # a dropped connection counts as an error, not a crash
                with lock:
                    statuses[0] += 1
                    errors.append(f"{type(e).__name__}: {e}")
                return
            dt = time.perf_counter() - t
            with lock:
                statuses[status] += 1
                latencies.append(dt)
                if status == 200:
                    answered_ids.extend(x["id"] for x in d["inspections"])
                    server_totals.append(d["timings"]["total"])
                else:
                    errors.append(f"{status}: {str(d)[:200]}")

        t_start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as ex:
            list(ex.map(one, range(args.requests)))
        wall = time.perf_counter() - t_start
        load_end = _load()

        # every inspection stored exactly once: the total and the ids, page by page
        status, first = setup.call("GET", "/v1/inspections?limit=1")
        stored: list[str] = []
        offset = 0
        while True:
            status, page = setup.call("GET", f"/v1/inspections?limit=500&offset={offset}")
            assert status == 200, page
            stored += [x["id"] for x in page["inspections"]]
            if len(page["inspections"]) < 500:
                break
            offset += 500
        ok = statuses.get(200, 0)
        new_total = first["total"] - total_before
        check = {
            "successful_requests": ok,
            "ids_answered": len(answered_ids),
            "ids_answered_unique": len(set(answered_ids)),
            "total_before": total_before,
            "total_after": first["total"],
            "ids_listed": len(stored),
            "ids_listed_unique": len(set(stored)),
            "stored_exactly_once": new_total == ok == len(set(answered_ids)) == len(answered_ids)
            and len(stored) == len(set(stored)) == first["total"]
            and set(answered_ids) <= set(stored),
        }
    finally:
        proc.terminate()  # the child this script started, by its pid
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    lat = sorted(latencies)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else float("nan")

    result = {
        "command": " ".join(["benchmarks/service_load.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": f"{load_start} -> {load_end}",
        "service": {"workers": args.workers, "token": True, "host": "127.0.0.1"},
        "what": (
            f"stored {args.detector} model (fitted once on {len(refs)} references), one test image per request"
            if args.model
            else f"{args.detector} fitted on {len(refs)} references sent with every request, one test image"
        ),
        "model": model_info,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "images": [f"{n}" for n, _ in images],
        "wall_seconds": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 2) if wall else None,
        "latency_seconds": {
            "p50": pct(0.50),
            "p95": pct(0.95),
            "max": round(lat[-1], 3) if lat else None,
            "mean": round(statistics.fmean(lat), 3) if lat else None,
        },
        "server_total_seconds": {
            "p50": round(statistics.median(server_totals), 3) if server_totals else None,
            "mean": round(statistics.fmean(server_totals), 3) if server_totals else None,
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": len(errors),
        "error_examples": errors[:5],
        "reconnects": sum(c.reconnects for c in conns),
        "storage_check": check,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Service load: concurrent POST /v1/detect",
        "",
        f"`.venv/bin/python {result['command']}`; {result['date']}, {result['cpu_cores']} CPU cores, load average "
        f"{result['load_average']}; `genad serve --workers {args.workers}` with a token, on 127.0.0.1; "
        f"{result['what']}; {len(images)} magnetic_tile test images (113x287 to 502x308 px) cycled; "
        "`inline_png=false`.",
        "",
        "| what | value |",
        "|---|---|",
        f"| requests, concurrency | {args.requests}, {args.concurrency} |",
        f"| wall time | {result['wall_seconds']} s |",
        f"| throughput | {result['throughput_rps']} requests/s |",
        f"| latency p50 / p95 / max (client) | {pct(0.5)} / {pct(0.95)} / {result['latency_seconds']['max']} s |",
        f"| server `timings.total` p50 | {result['server_total_seconds']['p50']} s |",
        f"| statuses | {', '.join(f'{k}: {v}' for k, v in result['statuses'].items())} |",
        f"| errors, reconnects | {result['errors']}, {result['reconnects']} |",
        f"| stored exactly once | {check['stored_exactly_once']} ({check['ids_answered_unique']} ids answered, "
        f"total {check['total_before']} -> {check['total_after']}, {check['ids_listed_unique']} distinct ids listed) |",
    ]
    if model_info:
        md.append(f"| model fit (POST /v1/models, {len(refs)} references) | {model_info['fit_seconds']} s |")
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if not check["stored_exactly_once"] or errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
