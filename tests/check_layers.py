#!/usr/bin/env python3
"""loom's layering, enforced: no file under src/loom/<folder>/ includes a folder on a higher layer.

The layers are read from docs/architecture.md, from the fenced block that follows the line
`<!-- layers: ... -->`: one layer per line, the highest first, folders separated by spaces. A
folder may include its own files and any folder on a lower line; folders on one line are
siblings and may not include each other. Every folder under src/loom/ must be on the diagram
(a new folder fails until it is placed), and every folder on the diagram must exist.

    tests/check_layers.py [ROOT]          check the tree at ROOT (default: this checkout)
    tests/check_layers.py --self-test     also prove the check fails on a planted upward include
"""
import os
import re
import shutil
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s*"loom/([^/"]+)/[^"]*"', re.M)


def read_layers(root):
    doc = os.path.join(root, "docs", "architecture.md")
    text = open(doc, encoding="utf-8").read()
    marker = text.find("<!-- layers:")
    if marker < 0:
        sys.exit(f"{doc}: no '<!-- layers: ... -->' marker before the layer diagram")
    block = re.search(r"```[a-z]*\n(.*?)```", text[marker:], re.S)
    if not block:
        sys.exit(f"{doc}: no fenced block after the layers marker")
    lines = [line.split() for line in block.group(1).splitlines() if line.strip()]
    rank = {}
    for height, folders in enumerate(reversed(lines)):
        for folder in folders:
            folder = folder.rstrip("/")
            if folder in rank:
                sys.exit(f"{doc}: folder '{folder}' appears twice on the layer diagram")
            rank[folder] = height
    return rank


def check(root):
    rank = read_layers(root)
    src = os.path.join(root, "src", "loom")
    folders = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    problems = []
    for folder in folders:
        if folder not in rank:
            problems.append(f"src/loom/{folder}/ is not on the layer diagram in docs/architecture.md")
    for folder in rank:
        if folder not in folders:
            problems.append(f"docs/architecture.md's layer diagram names '{folder}', which is not a folder of src/loom/")
    for folder in folders:
        if folder not in rank:
            continue
        for dirpath, _, files in os.walk(os.path.join(src, folder)):
            for name in sorted(files):
                if not name.endswith((".h", ".cpp", ".inc")):
                    continue
                path = os.path.join(dirpath, name)
                text = open(path, encoding="utf-8").read()
                for match in INCLUDE.finditer(text):
                    target = match.group(1)
                    line = text.count("\n", 0, match.start()) + 1
                    where = f"{os.path.relpath(path, root)}:{line}"
                    if target == folder:
                        continue
                    if target not in rank:
                        problems.append(f"{where}: includes loom/{target}/, which is not on the layer diagram")
                    elif rank[target] >= rank[folder]:
                        how = "a sibling layer" if rank[target] == rank[folder] else "a higher layer"
                        problems.append(f"{where}: {folder}/ includes loom/{target}/, {how}")
    return problems


def self_test(root):
    """Copies src/ and docs/ away, plants an upward include, and expects exactly that to be found."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(root, "src"), os.path.join(tmp, "src"))
        shutil.copytree(os.path.join(root, "docs"), os.path.join(tmp, "docs"))
        planted = os.path.join(tmp, "src", "loom", "nn", "block.cpp")
        with open(planted, "a", encoding="utf-8") as f:
            f.write('\n#include "loom/train/trainer.h"\n')
        problems = check(tmp)
        if len(problems) != 1 or "nn/block.cpp" not in problems[0] or "loom/train/" not in problems[0]:
            sys.exit("self-test: a planted upward include (nn/ -> train/) was not reported alone: "
                     + repr(problems))
        print("self-test: the planted upward include was reported:", problems[0])


def main():
    args = [a for a in sys.argv[1:] if a != "--self-test"]
    root = args[0] if args else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problems = check(root)
    for p in problems:
        print(p)
    if problems:
        sys.exit(f"check_layers: {len(problems)} include(s) or folder(s) break the layering")
    if "--self-test" in sys.argv:
        self_test(root)
    print("check_layers: every include points down the layers")


if __name__ == "__main__":
    main()
