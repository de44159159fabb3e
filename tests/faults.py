#!/usr/bin/env python3
"""Crash-safety harness: kills loom with SIGKILL at random instants and checks what it leaves.

train:    a tiny run with a checkpoint every few steps is killed --kills times (at random instants,
          the moment a checkpoint's staging directory appears, and while the data cache and the
          tokenizer are being built); after each kill every step-* directory must load (`loom
          generate`), at most one save interval of steps may be lost, and `loom train --resume`
          continues. The run that finally finishes must equal an uninterrupted run bit for bit:
          weights, optimizer state and every logged loss.
convert:  `loom data`, `loom quantize`, `loom export` and `loom import` killed at random: each output
          is either absent or byte-identical to an uninterrupted command's.
diskfull: training into a small tmpfs (root only; skipped otherwise) fails with one clear line and
          leaves its last checkpoint loadable.

Prints a JSON summary as its last line; exits 1 on any failed check.
Usage: faults.py --loom build/loom [--kills 50] [--phases train,convert,diskfull] [--seed 1] [--work DIR]
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "hall", "quickly"]
SAVE_EVERY = 3
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL: " + what, flush=True)
    return ok


def make_corpus(data_dir, lines=1500):
    corpus = os.path.join(data_dir, "tiny")
    os.makedirs(corpus, exist_ok=True)
    rng = random.Random(7)
    for name, n in (("train.txt", lines), ("valid.txt", 60), ("test.txt", 60)):
        with open(os.path.join(corpus, name), "w") as f:
            for i in range(n):
                f.write(" ".join(rng.choice(WORDS) for _ in range(12)) + " %d.\n" % (i % 97))


LLAMA = ", position: rope, norm: rmsnorm, ffn: swiglu, bias: false, n_kv_heads: 2, tie_embeddings: false"


def recipe_text(data_dir, steps, model_extra=""):
    return ("format: 1\n"
            "model: {vocab_size: 300, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64, max_seq_len: 32, dropout: 0.1%s}\n"
            % model_extra +
            "data: {corpus: tiny, dir: %s}\n"
            "train: {steps: %d, batch_size: 4, warmup_steps: 2, eval_every: 10, eval_batches: 2, save_every: %d, "
            "keep_last: 2, log_every: 1, lr: 0.003, precision: fp32}\n" % (data_dir, steps, SAVE_EVERY))


def safetensors_tensors(path):
    """name -> sha256 of the tensor's bytes (metadata, which holds no weights, is left out)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = hashlib.sha256(blob[8 + n + a:8 + n + b]).hexdigest()
    return out


def losses(run_dir):
    rows = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows.append({k: v for k, v in row.items() if k != "tokens_per_s"})
    return rows


def checkpoints(run_dir):
    if not os.path.isdir(run_dir):
        return []
    return sorted(d for d in os.listdir(run_dir) if d.startswith("step-"))


def loads(loom, ckpt):
    r = subprocess.run([loom, "--threads", "1", "generate", ckpt, "--prompt", "the", "--max-new-tokens", "1",
                        "--temperature", "0"], capture_output=True, text=True)
    return r.returncode == 0, r.stderr.strip()[-300:]


def last_logged_step(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    step = 0
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if "loss" in row:
                step = max(step, row["step"])
    return step


def start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc, deadline, condition=None):
    """SIGKILLs proc at `deadline` (seconds from now) or as soon as condition() holds; returns False if
    it finished first."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if condition is not None and condition():
            break
        time.sleep(0.0005 if condition else 0.005)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def train_phase(loom, work, kills, rng):
    steps = 36
    ref_data = os.path.join(work, "ref-data")
    make_corpus(ref_data)
    recipe = os.path.join(work, "ref.yaml")
    open(recipe, "w").write(recipe_text(ref_data, steps))
    t0 = time.monotonic()
    r = subprocess.run([loom, "--threads", "1", "train", recipe, "--out", os.path.join(work, "ref-run")],
                       capture_output=True, text=True)
    full = time.monotonic() - t0
    if not check(r.returncode == 0, "the uninterrupted run failed: " + r.stderr[-500:]):
        return {}
    ref_final = os.path.join(work, "ref-run", "step-%06d" % steps)
    ref_weights = safetensors_tensors(os.path.join(ref_final, "model.safetensors"))
    ref_optimizer = safetensors_tensors(os.path.join(ref_final, "optimizer.safetensors"))
    ref_losses = losses(os.path.join(work, "ref-run"))
    print("uninterrupted run: %d steps in %.1f s" % (steps, full), flush=True)

    stats = {"kills": 0, "during_checkpoint_write": 0, "during_data_build": 0, "lost_steps_max": 0,
             "checkpoints_loaded": 0, "runs": 0, "bit_exact_runs": 0}
    episode = 0
    while stats["kills"] < kills:
        episode += 1
        data = os.path.join(work, "data-%d" % episode)
        make_corpus(data)  # raw text only: the first attempt builds the cache and the tokenizer
        recipe = os.path.join(work, "run-%d.yaml" % episode)
        open(recipe, "w").write(recipe_text(data, steps))
        run = os.path.join(work, "run-%d" % episode)
        per_episode = min(10, kills - stats["kills"])
        for k in range(per_episode + 1):
            have = checkpoints(run)
            cmd = [loom, "--threads", "1", "train"] + (["--resume", run] if have else [recipe, "--out", run])
            resumed_from = int(have[-1][5:]) if have else 0
            proc = start(cmd)
            if k == per_episode:  # the last attempt runs to the end
                _, err = proc.communicate()
                check(proc.returncode == 0, "episode %d: the final attempt failed: %s" % (episode, err[-500:]))
                break
            mode = rng.choice(["random", "random", "checkpoint", "data"] if k == 0 else
                              ["random", "random", "checkpoint"])
            if mode == "checkpoint":
                def staging():
                    return os.path.isdir(run) and any(d.startswith(".tmp-") for d in os.listdir(run))
                killed = kill_when(proc, full, staging)
            elif mode == "data":
                killed = kill_when(proc, rng.uniform(0.05, 0.6))
            else:
                killed = kill_when(proc, rng.uniform(0.1, full))
            if not killed:
                _, err = proc.communicate()
                check(proc.returncode == 0, "episode %d: an attempt failed: %s" % (episode, err[-500:]))
                break
            stats["kills"] += 1
            if mode == "checkpoint":
                stats["during_checkpoint_write"] += 1
            if mode == "data" and not checkpoints(run):
                stats["during_data_build"] += 1
            # What the kill left: every checkpoint loads; at most one save interval is lost.
            for ckpt in checkpoints(run):
                ok, err = loads(loom, os.path.join(run, ckpt))
                stats["checkpoints_loaded"] += ok
                check(ok, "episode %d kill %d: %s does not load: %s" % (episode, k, ckpt, err))
            latest = int(checkpoints(run)[-1][5:]) if checkpoints(run) else 0
            lost = last_logged_step(run) - latest
            stats["lost_steps_max"] = max(stats["lost_steps_max"], lost)
            check(lost <= SAVE_EVERY, "episode %d kill %d: %d steps lost (logged %d, checkpoint %d)" %
                  (episode, k, lost, last_logged_step(run), latest))
            check(latest >= resumed_from, "episode %d kill %d: the newest checkpoint went back from %d to %d" %
                  (episode, k, resumed_from, latest))
            if latest == steps:  # the kill came after the final checkpoint: the run is complete (a
                break            # --resume would refuse it) and the episode ends here
        final = os.path.join(run, "step-%06d" % steps)
        stats["runs"] += 1
        if not check(os.path.isdir(final), "episode %d: no final checkpoint" % episode):
            continue
        same = (safetensors_tensors(os.path.join(final, "model.safetensors")) == ref_weights and
                safetensors_tensors(os.path.join(final, "optimizer.safetensors")) == ref_optimizer)
        check(same, "episode %d: the final weights differ from the uninterrupted run's" % episode)
        same_losses = losses(run) == ref_losses
        check(same_losses, "episode %d: metrics.jsonl differs from the uninterrupted run's" % episode)
        leftovers = [d for d in os.listdir(run) if d.startswith(".")]
        check(not leftovers, "episode %d: left behind %s" % (episode, leftovers))
        stats["bit_exact_runs"] += same and same_losses
        print("episode %d: %d kills so far, final weights %s" % (episode, stats["kills"],
                                                                 "equal" if same else "DIFFERENT"), flush=True)
    return stats


def digest_tree(path):
    """Relative path -> sha256 of every file under path (or of path itself)."""
    if os.path.isfile(path):
        return {"": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return out


def convert_phase(loom, work, kills, rng):
    """Each command once uninterrupted (the reference), then killed at random: its output must be
    absent or complete, and a later run of it must succeed."""
    # A LLaMA-style model, which every converter takes.
    ckpt = os.path.join(work, "llama-run")
    data = os.path.join(work, "llama-data")
    make_corpus(data)
    open(os.path.join(work, "llama.yaml"), "w").write(recipe_text(data, 6, LLAMA))
    subprocess.run([loom, "--threads", "1", "train", os.path.join(work, "llama.yaml"), "--out", ckpt],
                   capture_output=True, check=True)
    ckpt = os.path.join(ckpt, checkpoints(ckpt)[-1])
    gguf_ref = os.path.join(work, "ref.gguf")
    commands = {
        "export": lambda out: ["export", ckpt, "--format", "gguf", "--type", "q8_0", "--out", out],
        "quantize": lambda out: ["quantize", ckpt, "--method", "int8", "--out", out],
        "import": lambda out: ["import", gguf_ref, "--out", out],
        "data": lambda out: ["data", "--corpus", "tiny", "--vocab-size", "300", "--dir", out],
    }
    stats = {"kills": 0, "outputs_checked": 0}
    refs = {}
    # The tokenizer file names the text it was trained on: every `loom data` runs in one directory.
    data_dir = os.path.join(work, "data-trial")
    for name in ["export", "quantize", "import", "data"]:
        out = os.path.join(work, "ref-" + name)
        if name == "export":
            out = gguf_ref
        if name == "data":
            out = data_dir
            make_corpus(out)
        t0 = time.monotonic()
        r = subprocess.run([loom, "--threads", "1"] + commands[name](out), capture_output=True, text=True)
        if not check(r.returncode == 0, "loom %s failed: %s" % (name, r.stderr[-500:])):
            return stats
        refs[name] = (digest_tree(out), time.monotonic() - t0)
    names = list(commands)
    i = 0
    while stats["kills"] < kills:
        name = names[i % len(names)]
        i += 1
        out = os.path.join(work, "out-%d-%s" % (i, name))
        if name == "data":
            out = data_dir
            shutil.rmtree(out)
            make_corpus(out)
        before = digest_tree(out) if os.path.exists(out) else None
        proc = start([loom, "--threads", "1"] + commands[name](out))
        if not kill_when(proc, rng.uniform(0.05, refs[name][1])):
            proc.communicate()
            continue
        stats["kills"] += 1
        ref = refs[name][0]
        if os.path.exists(out):
            got = digest_tree(out)
            if name == "data":  # the raw text was there before: each cache file is whole or absent
                partial = {f: d for f, d in got.items() if f not in before and ".tmp" not in f}
                ok = all(ref.get(f) == d for f, d in partial.items())
            else:
                ok = got == ref
            check(ok, "loom %s killed: it left an incomplete output %s" % (name, out))
            stats["outputs_checked"] += 1
        r = subprocess.run([loom, "--threads", "1"] + commands[name](out + ("" if name == "data" else ".again")),
                           capture_output=True, text=True)
        check(r.returncode == 0, "loom %s after a kill failed: %s" % (name, r.stderr[-300:]))
        if name == "data":
            check(digest_tree(out) == ref, "loom data after a kill left a cache unlike an uninterrupted one")
    return stats


def diskfull_phase(loom, work):
    if os.geteuid() != 0 or not shutil.which("mount"):
        print("diskfull: skipped (needs root to mount a tmpfs)")
        return {"skipped": True}
    data = os.path.join(work, "df-data")
    make_corpus(data)
    subprocess.run([loom, "--threads", "1", "data", "--corpus", "tiny", "--vocab-size", "300", "--dir", data],
                   capture_output=True, check=True)
    mnt = os.path.join(work, "small")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", mnt]).returncode != 0:
        print("diskfull: skipped (mount failed)")
        return {"skipped": True}
    try:
        recipe = os.path.join(work, "df.yaml")
        open(recipe, "w").write(recipe_text(data, 60).replace("keep_last: 2", "keep_last: 100"))
        run = os.path.join(mnt, "run")
        r = subprocess.run([loom, "--threads", "1", "train", recipe, "--out", run], capture_output=True, text=True)
        lines = [l for l in r.stderr.strip().splitlines() if "error" in l.lower()]
        check(r.returncode != 0, "diskfull: training into a full disk succeeded")
        check(any("No space left" in l for l in lines), "diskfull: no clear error: %s" % r.stderr[-400:])
        have = checkpoints(run)
        check(len(have) >= 1, "diskfull: no checkpoint fit at all: make the tmpfs larger")
        if have:
            ok, err = loads(loom, os.path.join(run, have[-1]))
            check(ok, "diskfull: the last checkpoint %s does not load: %s" % (have[-1], err))
        leftovers = [d for d in os.listdir(run) if d.startswith(".tmp-")] if os.path.isdir(run) else []
        check(not leftovers, "diskfull: left staging directories %s" % leftovers)
        return {"skipped": False, "checkpoints_before_full": len(have), "error": lines[-1] if lines else ""}
    finally:
        subprocess.run(["umount", mnt])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loom", required=True)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--convert-kills", type=int, default=None)
    ap.add_argument("--phases", default="train,convert,diskfull")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    loom = os.path.abspath(args.loom)
    rng = random.Random(args.seed)
    work = args.work or tempfile.mkdtemp(prefix="loom-faults-")
    os.makedirs(work, exist_ok=True)
    summary = {}
    t0 = time.monotonic()
    try:
        phases = args.phases.split(",")
        if "train" in phases:
            summary["train"] = train_phase(loom, work, args.kills, rng)
        if "convert" in phases:
            summary["convert"] = convert_phase(loom, work, args.convert_kills or args.kills, rng)
        if "diskfull" in phases:
            summary["diskfull"] = diskfull_phase(loom, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    summary["failures"] = failures
    print(json.dumps(summary))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
