"""Load on a reward server over loopback: latency, throughput, memory, and that no score goes astray.

A real ``simplear-rl rewards serve`` process on 127.0.0.1 (with a bearer token) serves the test
suite's ``image_id`` reward, which reads back the id each image carries in its top-left pixel and
logs every id it scores. ``--clients`` threads (one per simulated training rank), each with its own
``remote`` reward, send ``--requests`` requests of ``--rows`` noise images of ``--size`` pixels.

Reported: p50/p99 request latency, images per second, and the same for ONE client sending the same
requests first (the baseline, measured in the same run; it also warms the server up); the server's
RSS after start-up, after the baseline, half-way through the load and at the end; and the checks: a request lost (raised),
a score returned to the wrong row (mismatched), an id scored twice (duplicated) or never.

    python bench/reward_server_load.py                          # 8 clients x 50 requests x 16 images of 64 px
    python bench/reward_server_load.py --clients 4 --requests 5 --json load.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from reward_server_helpers import reward_server, rss_bytes, scored_ids, tagged_images  # noqa: E402

TOKEN = "bench-token-" + "0123456789abcdef" * 2


def client(url: str, token_file: Path, ids: list[list[int]], size: int, out: dict[str, Any],
           ready: threading.Barrier) -> None:
    """One simulated rank: a ``remote`` reward sending each id list as one request; records what came back.
    Building the reward (and its start-up checks) happens before ``ready``, outside the measured time."""
    from rewards import build_rewards

    reward = build_rewards([{"name": "remote", "as": "image_id", "url": url, "rewards": ["image_id"],
                             "token_file": str(token_file), "batch_size": len(ids[0]), "timeout": 120,
                             "retries": 2}]).rewards["image_id"]
    ready.wait()
    for request_ids in ids:
        images = tagged_images(request_ids, size=size, seed=request_ids[0])
        prompts = [f"row {i}" for i in request_ids]
        start = time.perf_counter()
        try:
            scores = reward.score_batch(images, prompts).tolist()
        except Exception as exc:  # noqa: BLE001 - a lost request is what this measures
            out["errors"].append(f"{type(exc).__name__}: {exc}")
            continue
        out["latencies"].append(time.perf_counter() - start)
        out["mismatched"] += sum(int(round(s)) != i for s, i in zip(scores, request_ids))
        out["returned"] += len(scores)


def drive(url: str, token_file: Path, clients: int, requests: int, rows: int, size: int, first_id: int) -> dict[str, Any]:
    """``clients`` threads at once, each sending ``requests`` requests of ``rows`` distinct ids from ``first_id``."""
    outs = [{"latencies": [], "errors": [], "mismatched": 0, "returned": 0} for _ in range(clients)]
    per_client = requests * rows
    plans = [
        [[first_id + c * per_client + r * rows + k for k in range(rows)] for r in range(requests)] for c in range(clients)
    ]
    ready = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, args=(url, token_file, plans[c], size, outs[c], ready))
               for c in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    latencies = sorted(x for out in outs for x in out["latencies"])
    sent = [i for plan in plans for request in plan for i in request]
    return {
        "clients": clients, "requests": clients * requests, "rows": rows, "seconds": seconds,
        "p50_s": _quantile(latencies, 0.50), "p99_s": _quantile(latencies, 0.99),
        "images_per_s": sum(out["returned"] for out in outs) / seconds,
        "lost": sum(len(out["errors"]) for out in outs), "errors": [e for out in outs for e in out["errors"]][:5],
        "mismatched": sum(out["mismatched"] for out in outs), "sent_ids": sent,
    }


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted ``values``."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def run(clients: int, requests: int, rows: int, size: int, workdir: Path) -> dict[str, Any]:
    """Start a server, run the one-client baseline then the load, and check every id came back once."""
    log = workdir / "scored.txt"
    spec = workdir / "rewards.yaml"
    spec.write_text(f'rewards:\n  - {{name: "reward_server_helpers:image_id", as: image_id, log: "{log}"}}\n')
    token_file = workdir / "reward.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    with reward_server(spec, workdir / "server.log", "--token_file", str(token_file), "--max_batch", str(rows),
                       "--max_concurrent", str(max(32, clients))) as server:
        pid = server.process.pid
        rss_started = rss_bytes(pid)
        baseline = drive(server.url, token_file, 1, requests, rows, size, first_id=clients * requests * rows)
        rss_start = rss_bytes(pid)
        samples: list[int] = []
        done = threading.Event()
        watcher = threading.Thread(target=_sample_rss, args=(pid, samples, done))
        watcher.start()
        try:
            load = drive(server.url, token_file, clients, requests, rows, size, first_id=0)
        finally:
            done.set()
            watcher.join()
        rss_end = rss_bytes(pid)
        output = server.output()
    counts: dict[int, int] = {}
    for i in scored_ids(log):
        counts[i] = counts.get(i, 0) + 1
    sent = set(load.pop("sent_ids")) | set(baseline.pop("sent_ids"))
    return {
        "baseline": baseline, "load": load, "size": size,
        "duplicated": sum(n - 1 for n in counts.values() if n > 1),
        "never_scored": len(sent - set(counts)), "unexpected": len(set(counts) - sent),
        "rss_started_mib": rss_started / 2**20, "rss_start_mib": rss_start / 2**20, "rss_end_mib": rss_end / 2**20,
        "rss_half_mib": samples[len(samples) // 2] / 2**20 if samples else rss_end / 2**20,
        "rss_peak_mib": max(samples + [rss_end]) / 2**20,
        "token_in_server_output": TOKEN in output,
    }


def _sample_rss(pid: int, samples: list[int], done: threading.Event) -> None:
    """The server's RSS every 0.2 s until ``done``: flat memory means the second half adds nothing."""
    while not done.wait(0.2):
        samples.append(rss_bytes(pid))


def markdown(result: dict[str, Any]) -> str:
    base, load = result["baseline"], result["load"]
    lines = [
        f"| clients | requests x images ({result['size']} px) | p50 s | p99 s | images/s | vs 1 client |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in (base, load):
        ratio = row["images_per_s"] / base["images_per_s"]
        lines.append(f"| {row['clients']} | {row['requests']} x {row['rows']} | {row['p50_s']:.3f} | {row['p99_s']:.3f} "
                     f"| {row['images_per_s']:.0f} | {ratio:.2f}x |")
    lines.append("")
    lines.append(f"server RSS: {result['rss_started_mib']:.0f} MiB after start-up, {result['rss_start_mib']:.0f} MiB "
                 f"after the baseline, {result['rss_half_mib']:.0f} MiB half-way through the load, "
                 f"{result['rss_end_mib']:.0f} MiB at the end (peak {result['rss_peak_mib']:.0f} MiB)")
    lines.append(f"lost {load['lost'] + base['lost']}, mismatched {load['mismatched'] + base['mismatched']}, "
                 f"duplicated {result['duplicated']}, never scored {result['never_scored']}, "
                 f"unexpected {result['unexpected']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients, one per simulated rank")
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--rows", type=int, default=16, help="images per request")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (noise, so PNGs do not shrink)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    import torch

    # One torch thread, as the server runs (OMP_NUM_THREADS=1): on a busy CPU, OpenMP threads spinning over
    # tiny per-image tensors make PNG encoding ~20x slower and the baseline would measure that.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.clients, args.requests, args.rows, args.size, Path(tmp))
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    bad = sum(result[k]["lost"] + result[k]["mismatched"] for k in ("baseline", "load"))
    bad += result["duplicated"] + result["never_scored"]
    return 1 if bad or result["unexpected"] or result["token_in_server_output"] else 0


if __name__ == "__main__":
    sys.exit(main())
