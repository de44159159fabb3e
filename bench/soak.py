#!/usr/bin/env python3
"""Soak test of `loom serve` (bench/soak.sh runs it): CLIENTS streaming chat clients for DURATION
seconds, plus one abuser thread sending malformed and hostile requests the whole time: invalid
JSON, invalid UTF-8, wrong types, oversized bodies and prompts, huge max_tokens, many stop strings,
unknown paths, streams dropped mid-way, streams never read, idle and trickling connections.

Every well-formed request must get 200 with a complete stream; every hostile one a 4xx (or, for
the ones that hang up, nothing); never a 5xx, a reset or a dead server. Samples the server's RSS
once a second. Prints a table and a JSON summary as its last line; exits 1 on any unexpected
answer or if RSS grows by more than --rss-growth-mb over the second half of the run (the first
minutes warm up the handler threads' stacks and malloc's arenas).
"""
import argparse
import http.client
import json
import os
import random
import socket
import statistics
import sys
import threading
import time

lock = threading.Lock()
counts = {}          # kind -> answers as expected
unexpected = {}      # kind -> unexpected answers (status or exception name)
latencies = []       # seconds per well-formed streamed request
first_token = []     # seconds to the first content chunk


def note(table, kind, n=1):
    with lock:
        table[kind] = table.get(kind, 0) + n


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stream_chat(port, rng, max_tokens):
    body = json.dumps({"messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                       "max_tokens": max_tokens, "temperature": 0.8, "stream": True})
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            try:
                code = json.loads(r.read())["error"]["code"]
            except Exception:
                code = "?"
            note(unexpected, "stream: status %d (%s)" % (r.status, code))
            return
        done, first = False, None
        for raw in r:
            line = raw.decode("utf-8")  # raises on ill-formed UTF-8
            if not line.startswith("data: "):
                continue
            payload = line[6:].strip()
            if payload == "[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                note(unexpected, "stream: error event")
                return
            if first is None and chunk["choices"][0]["delta"].get("content"):
                first = time.monotonic() - start
        if not done:
            note(unexpected, "stream: no [DONE]")
            return
        with lock:
            latencies.append(time.monotonic() - start)
            if first is not None:
                first_token.append(first)
        note(counts, "stream: served")
    except Exception as e:  # a reset, a timeout, bad UTF-8 or JSON: all unexpected
        note(unexpected, "stream: " + type(e).__name__)
    finally:
        conn.close()


PROMPTS = ["Tell me about the sea.", "What is a cat?", "Write a short poem about bread.",
           "café, naïve, 東京 😀: say something", "List three colours."]


def post_raw(port, path, body, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, headers or {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        return r.status, data
    finally:
        conn.close()


def abuse_once(port, rng, context):
    """One hostile request of a random kind; records whether the server answered as it must."""
    kind = rng.choice(["invalid_json", "invalid_utf8", "wrong_type", "huge_max_tokens", "long_prompt",
                       "big_body", "many_stops", "unknown_path", "drop_stream", "unread_stream", "idle_socket",
                       "trickle", "number_overflow", "deep_nesting"])
    try:
        if kind == "drop_stream":  # read the first bytes of a stream, then hang up
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            body = json.dumps({"prompt": "the", "max_tokens": 200, "stream": True}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            s.recv(64)
            s.close()
            note(counts, kind)
            return
        if kind == "unread_stream":  # ask for a stream and never read it
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            body = json.dumps({"prompt": "the", "max_tokens": 100, "stream": True}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(rng.uniform(0.5, 3))
            s.close()
            note(counts, kind)
            return
        if kind == "idle_socket":  # connect, send nothing for a while
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            time.sleep(rng.uniform(0.5, 3))
            s.close()
            note(counts, kind)
            return
        if kind == "trickle":  # a request one byte at a time
            # A long timeout: the request then waits in the queue behind the streaming clients.
            s = socket.create_connection(("127.0.0.1", port), timeout=180)
            body = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
            req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            for i in range(len(req)):
                s.send(req[i:i + 1])
                time.sleep(0.01)
            reply = b""
            while True:
                got = s.recv(4096)
                if not got:
                    break
                reply += got
            s.close()
            status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0
            note(counts if status == 200 else unexpected, kind if status == 200 else "%s: %d" % (kind, status))
            return
        bodies = {
            "invalid_json": b'{"prompt": "the cat", ',
            "invalid_utf8": b'{"prompt": "caf\xc3", "max_tokens": 2}',
            "wrong_type": json.dumps({"prompt": 7, "max_tokens": "many"}).encode(),
            "huge_max_tokens": json.dumps({"prompt": "the", "max_tokens": 10 ** 12}).encode(),
            "long_prompt": json.dumps({"prompt": "the cat sat " * (context * 2), "max_tokens": 4}).encode(),
            "big_body": json.dumps({"prompt": "x" * (3 << 20)}).encode(),
            "many_stops": json.dumps({"prompt": "the", "max_tokens": 2, "stop": ["a"] * 100000}).encode(),
            "unknown_path": b"{}",
            "number_overflow": b'{"prompt": "a", "max_tokens": 6e6666}',
            "deep_nesting": b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}",
        }
        path = "/v1/nothing" if kind == "unknown_path" else "/v1/completions"
        status, _ = post_raw(port, path, bodies[kind])
        ok = 400 <= status < 500
        note(counts if ok else unexpected, kind if ok else "%s: %d" % (kind, status))
    except Exception as e:
        note(unexpected, "%s: %s" % (kind, type(e).__name__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--abusers", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--rss-growth-mb", type=float, default=32)
    args = ap.parse_args()
    end = time.monotonic() + args.duration
    warmup_end = time.monotonic() + min(30, args.duration / 10)
    rss = {"start": 0, "peak": 0, "end": 0}
    per_minute = []  # RSS (MB) at the end of each minute
    stop = threading.Event()

    t_start = time.monotonic()

    def sampler():
        while not stop.is_set():
            try:
                now = rss_kb(args.pid)
            except OSError:
                note(unexpected, "server: gone")
                return
            rss["peak"] = max(rss["peak"], now)
            if rss["start"] == 0 and time.monotonic() >= warmup_end:
                rss["start"] = now
            rss["end"] = now
            if time.monotonic() - t_start >= 60 * (len(per_minute) + 1):
                per_minute.append(round(now / 1024, 1))
            time.sleep(1)

    def client(seed):
        rng = random.Random(seed)
        while time.monotonic() < end:
            stream_chat(args.port, rng, args.max_tokens)

    def abuser(seed):
        rng = random.Random(seed)
        while time.monotonic() < end:
            abuse_once(args.port, rng, args.context)

    threads = [threading.Thread(target=sampler, daemon=True)]
    threads += [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    threads += [threading.Thread(target=abuser, args=(1000 + i,)) for i in range(args.abusers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    elapsed = time.monotonic() - t0
    try:
        status, _ = post_raw(args.port, "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 1}).encode())
        alive = status == 200
    except Exception:
        alive = False
    lat = sorted(latencies)
    p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
    summary = {
        "seconds": round(elapsed, 1), "clients": args.clients,
        "streams_served": counts.get("stream: served", 0),
        "hostile_answered": {k: v for k, v in sorted(counts.items()) if not k.startswith("stream")},
        "unexpected": unexpected,
        "latency_s": {"p50": round(p(lat, 0.5), 3), "p99": round(p(lat, 0.99), 3), "max": round(p(lat, 1.0), 3)},
        "first_token_p99_s": round(p(sorted(first_token), 0.99), 3),
        "rss_mb": {k: round(v / 1024, 1) for k, v in rss.items()},
        "rss_mb_per_minute": per_minute,
        "alive_at_end": alive,
    }
    # The handler threads and malloc's arenas warm up over the first minutes (each of 1,024
    # threads, taken in turn, touches its stack once): the bound is on the second half's growth.
    half = len(per_minute) // 2
    growth = per_minute[-1] - per_minute[half - 1] if half >= 1 else (rss["end"] - rss["start"]) / 1024
    print("streams served %d in %.0f s (%.1f/s); hostile requests answered %d; unexpected %d" %
          (summary["streams_served"], elapsed, summary["streams_served"] / elapsed,
           sum(summary["hostile_answered"].values()), sum(unexpected.values())))
    print("latency p50 %.3f s, p99 %.3f s; first token p99 %.3f s" %
          (summary["latency_s"]["p50"], summary["latency_s"]["p99"], summary["first_token_p99_s"]))
    print("RSS after warm-up %.1f MB, peak %.1f MB, end %.1f MB; growth over the second half %.1f MB (bound %.0f MB)" %
          (rss["start"] / 1024, rss["peak"] / 1024, rss["end"] / 1024, growth, args.rss_growth_mb))
    print("RSS each minute (MB): " + " ".join(str(x) for x in per_minute))
    print(json.dumps(summary))
    sys.exit(0 if alive and not unexpected and growth <= args.rss_growth_mb else 1)


if __name__ == "__main__":
    main()
