#!/usr/bin/env python3
"""Attributes a profiled training step's time by operator (docs/performance.md).

Reads the chrome://tracing file libtorch's profiler writes (bench/train_throughput with
LOOM_PROFILE=FILE) and prints, per operator, its self time (its own duration minus its direct
children's, per thread) as a share of all self time, largest first, plus the share of the GEMM
operators together. Only the standard library.

    bench/profile_summary.py TRACE [--top N] [--steps S]
"""
import argparse
import collections
import json


def self_times(events):
    """Self time per event name: duration minus the durations of the events directly inside it."""
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            by_thread[e.get("tid")].append(e)
    totals = collections.Counter()
    counts = collections.Counter()
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # (end, name, children duration)
        def close(until):
            while stack and stack[-1][0] <= until:
                end, name, child, dur = stack.pop()
                totals[name] += dur - child
                if stack:
                    stack[-1][2] += dur
        for e in evs:
            close(e["ts"])
            stack.append([e["ts"] + e["dur"], e["name"], 0.0, e["dur"]])
            counts[e["name"]] += 1
        close(float("inf"))
    return totals, counts


GEMM = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mkldnn_matmul", "aten::mkldnn_matmul",
        "aten::addmv", "aten::mv", "aten::dot"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--steps", type=int, default=1, help="steps in the trace (per-step milliseconds)")
    args = ap.parse_args()
    with open(args.trace) as f:
        events = json.load(f)
    totals, counts = self_times(events)
    whole = sum(totals.values())
    gemm = sum(v for k, v in totals.items() if k in GEMM)
    print(f"self time {whole / 1e3 / args.steps:.0f} ms per step; GEMM ({', '.join(sorted(k for k in GEMM if k in totals))}) "
          f"{100 * gemm / whole:.1f}%")
    print("| operator | calls per step | ms per step | share |")
    print("|---|---|---|---|")
    for name, t in totals.most_common(args.top):
        print(f"| {name} | {counts[name] // args.steps} | {t / 1e3 / args.steps:.1f} | {100 * t / whole:.1f}% |")


if __name__ == "__main__":
    main()
