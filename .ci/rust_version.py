"""Fails when a dependency needs a newer rustc than Cargo.toml's `rust-version` says.

Reads `cargo metadata --format-version 1` on stdin (every package of the lock file, with
its `rust_version` when it declares one).
"""

import json
import sys


def version(v):
    """`1.95` or `1.95.0` as a comparable triple."""
    return (tuple(int(x) for x in v.split(".")) + (0, 0))[:3]


meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
deps = [d for d in meta["packages"] if d["id"] not in members and d.get("rust_version")]
for p in meta["packages"]:
    if p["id"] not in members:
        continue
    name, ours = p["name"], p.get("rust_version")
    if not ours:
        sys.exit(f"{name}: Cargo.toml sets no rust-version")
    newer = [d for d in deps if version(d["rust_version"]) > version(ours)]
    if newer:
        need = max((d["rust_version"] for d in newer), key=version)
        names = ", ".join(sorted(f"{d['name']} {d['version']} ({d['rust_version']})" for d in newer))
        sys.exit(f"{name}: rust-version is {ours}, but dependencies need rustc {need}: {names}")
