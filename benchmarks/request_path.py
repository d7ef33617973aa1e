"""One request through the replica's own code: the pandas path vs the lean path (no Ray).

Both paths start from the request's raw bytes and run the code a replica runs for
``/invocations`` after the body is read (serve/model.py, serve/versions/), in one thread,
without the version's pool hop:

- ``pandas``: ``json.loads``, ``parse_invocation`` (a frame of objects), the pandas path's
  typing (`serve.scoring.shape_frame`: the empty-row check, ``FeatureSpec.frame``, the
  infinity check) and ``inplace_predict`` on the frame: what every request took before;
- ``lean``: ``json.loads``, ``parse_rows`` and `serve.scoring.Scorer.score`, which reads the
  values straight into a float32 block and calls ``inplace_predict`` on it.

The model is benchmarks/inference_log_overhead.py's booster (3 numbers, 1 category, 50
trees). Blocks of the two paths alternate, so a busy machine moves both alike; the table
shows per-request p50 and p99 and the ratio of p50s, for single-row bodies in each format
and for batches (which size the lean path's row limit, `serve.scoring.LEAN_MAX_ROWS`).

A second table prices the version's pool hop (`serve.versions.VersionRunner.predict`: submit
to the version's own thread pool, await the future on the event loop, the bounds and the
timeout) against scoring inline on the event loop, for one single-row request at a time and
for 8 at once (requests per second). The hop is what keeps a slow version from holding up
the replica's loop and the other versions; the table says what that isolation costs.

Usage: python benchmarks/request_path.py [--requests 2000] [--blocks 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
from inference_log_overhead import make_model  # benchmarks/ is on the path of a script

from serve.schemas import parse_invocation, parse_rows
from serve.scoring import Scorer, shape_frame
from serve.versions import Limits, VersionCounters, VersionRunner


def bodies(rng: np.random.Generator, n: int, rows: int, layout: str) -> list[bytes]:
    def row() -> dict:
        return {"x1": float(rng.normal()), "x2": float(rng.uniform(0, 10)),
                "x3": float(rng.normal()), "cat": str(rng.choice(list("abc")))}

    out = []
    for _ in range(n):
        records = [row() for _ in range(rows)]
        if layout == "dataframe_split":
            names = list(records[0])
            body = {"dataframe_split": {"columns": names,
                                        "data": [[r[c] for c in names] for r in records]}}
        else:
            body = {layout: records}
        out.append(json.dumps(body).encode())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per block and path")
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    model = make_model()
    scorer = Scorer(model, lean_max_rows=10**9)  # sized here, so no limit while measuring
    assert scorer.encoder is not None

    def pandas_path(raw: bytes) -> np.ndarray:
        frame = shape_frame(model.spec, parse_invocation(json.loads(raw)))
        return np.asarray(model.booster.inplace_predict(frame), dtype=np.float64)

    def lean_path(raw: bytes) -> np.ndarray:
        return scorer.score(parse_rows(json.loads(raw)))

    cases = [("1 row, dataframe_records", 1, "dataframe_records"),
             ("1 row, dataframe_split", 1, "dataframe_split"),
             ("1 row, instances", 1, "instances"),
             ("10 rows, records", 10, "dataframe_records"),
             ("100 rows, records", 100, "dataframe_records"),
             ("1000 rows, records", 1000, "dataframe_records"),
             ("5000 rows, records", 5000, "dataframe_records")]
    rng = np.random.default_rng(0)
    print(f"{'request':<26}{'pandas p50':>12}{'p99':>9}{'lean p50':>11}{'p99':>9}"
          f"{'pandas/lean':>13}   (ms per request)")
    for label, rows, layout in cases:
        n = max(5, args.requests // rows)
        block = bodies(rng, n, rows, layout)
        for raw in block[:3]:  # same answers, bit for bit, before any timing
            assert pandas_path(raw).tobytes() == lean_path(raw).tobytes()
        times: dict[str, list[float]] = {"pandas": [], "lean": []}
        for b in range(args.blocks):
            order = [("pandas", pandas_path), ("lean", lean_path)]
            for name, path in order if b % 2 == 0 else order[::-1]:
                for raw in block:
                    start = time.perf_counter()
                    path(raw)
                    times[name].append(time.perf_counter() - start)
        p = {k: np.percentile(np.array(v) * 1000, [50, 99]) for k, v in times.items()}
        print(f"{label:<26}{p['pandas'][0]:>12.3f}{p['pandas'][1]:>9.3f}{p['lean'][0]:>11.3f}"
              f"{p['lean'][1]:>9.3f}{p['pandas'][0] / p['lean'][0]:>12.1f}x")
    hop_table(model, scorer, rng, args)


def hop_table(model, scorer: Scorer, rng: np.random.Generator, args) -> None:
    """Inline scoring on the event loop vs the version's pool hop (see the module docstring)."""
    runner = VersionRunner(model, Limits(), VersionCounters())
    block = [parse_rows(json.loads(raw)) for raw in bodies(rng, args.requests, 1,
                                                            "dataframe_records")]

    async def inline(rows):
        return scorer.score(rows)

    async def hop(rows):
        outcome = await runner.predict(rows)
        assert outcome.ok, outcome
        return outcome.predictions

    async def one_at_a_time(path) -> list[float]:
        times = []
        for rows in block:
            start = time.perf_counter()
            await path(rows)
            times.append(time.perf_counter() - start)
        return times

    async def eight_at_once(path) -> float:
        queue = list(block)
        start = time.perf_counter()

        async def client():
            while queue:
                await path(queue.pop())
        await asyncio.gather(*(client() for _ in range(8)))
        return len(block) / (time.perf_counter() - start)

    async def measure():
        for rows in block[:3]:
            assert (await inline(rows)).tobytes() == (await hop(rows)).tobytes()
        latency: dict[str, list[float]] = {"inline": [], "hop": []}
        rps: dict[str, list[float]] = {"inline": [], "hop": []}
        for b in range(args.blocks):
            order = [("inline", inline), ("hop", hop)]
            for name, path in order if b % 2 == 0 else order[::-1]:
                latency[name] += await one_at_a_time(path)
                rps[name].append(await eight_at_once(path))
        return latency, rps

    latency, rps = asyncio.run(measure())
    runner.retire()
    p = {k: np.percentile(np.array(v) * 1000, [50, 99]) for k, v in latency.items()}
    r = {k: float(np.median(v)) for k, v in rps.items()}
    print(f"\n{'1 row, records':<26}{'inline p50':>12}{'p99':>9}{'hop p50':>11}{'p99':>9}"
          f"{'hop - inline':>14}{'inline rps@8':>14}{'hop rps@8':>11}{'hop/inline':>12}")
    print(f"{'':<26}{p['inline'][0]:>12.3f}{p['inline'][1]:>9.3f}{p['hop'][0]:>11.3f}"
          f"{p['hop'][1]:>9.3f}{p['hop'][0] - p['inline'][0]:>12.3f}ms"
          f"{r['inline']:>14.0f}{r['hop']:>11.0f}{r['hop'] / r['inline']:>11.2f}x")


if __name__ == "__main__":
    main()
