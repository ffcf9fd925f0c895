#!/usr/bin/env python3
"""Writes the license notices of every crate compiled into the binary (the normal-dependency
closure of docker-tls-manager on Linux, from `cargo metadata`), with the license files each
crate ships, identical texts written once. The packages ship it beside the copyright file,
which names it: the MIT, BSD and Apache licenses of those crates ask for their notices to go
with the binary.
    python3 packaging/third-party.py OUTPUT
"""
import hashlib
import json
import os
import subprocess
import sys

NAMES = ("license", "licence", "copying", "notice", "unlicense", "copyright")


def main(out_path):
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--locked", "--format-version", "1",
             "--filter-platform", "x86_64-unknown-linux-gnu"],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for dep in nodes[node]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    seen.discard(root)
    crates = sorted((packages[i] for i in seen), key=lambda p: (p["name"], p["version"]))

    texts = {}  # digest -> (number, text)
    entries = []
    for p in crates:
        directory = os.path.dirname(p["manifest_path"])
        files = sorted(
            f for f in os.listdir(directory)
            if f.lower().startswith(NAMES) and os.path.isfile(os.path.join(directory, f))
        )
        refs = []
        for f in files:
            with open(os.path.join(directory, f), encoding="utf-8", errors="replace") as fh:
                text = fh.read().strip()
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest not in texts:
                texts[digest] = (len(texts) + 1, text)
            refs.append(f"{f}: text [{texts[digest][0]}]")
        if not refs:
            refs.append("no license file in the crate; its license is the one named above")
        entries.append((p, refs))

    with open(out_path, "w", encoding="utf-8") as out:
        out.write(
            "docker-tls-manager is statically linked with these crates. Each is listed with its\n"
            "version, its license as the crate declares it, and the license files it ships;\n"
            "identical texts are written once, at the end, by number.\n\n"
        )
        for p, refs in entries:
            out.write(f"{p['name']} {p['version']}: {p.get('license') or 'see its license files'}\n")
            for r in refs:
                out.write(f"    {r}\n")
        for number, text in sorted(texts.values()):
            out.write(f"\n{'=' * 78}\n[{number}]\n\n{text}\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: packaging/third-party.py OUTPUT")
    main(sys.argv[1])
