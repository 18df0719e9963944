#!/usr/bin/env python3
"""Prints the graph of each crate's top-level modules (who refers to whom
through `crate::...`) and fails when it has a cycle.

    python3 .ci/module_cycles.py [CRATE_DIR ...]   (default: every crate)

A module is a file or directory directly under `src/`; its submodules count
as the module. References are `crate::name` anywhere in the code (use
declarations, paths, doc links excluded: lines starting with `//`).
"""
import os
import re
import sys

CRATES = ["fabric", "fabric-macros", "fabric-options"]


def modules(src):
    """{module: [files]} for the top-level modules of a crate."""
    found = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if entry in ("lib.rs", "main.rs"):
            continue
        if entry.endswith(".rs"):
            found.setdefault(entry[:-3], []).append(path)
        elif os.path.isdir(path):
            for root, _, files in os.walk(path):
                found.setdefault(entry, []).extend(
                    os.path.join(root, f) for f in files if f.endswith(".rs"))
    return found


def graph(src):
    mods = modules(src)
    edges = {m: set() for m in mods}
    for module, files in mods.items():
        for file in files:
            in_tests = False
            for line in open(file, encoding="utf-8"):
                stripped = line.strip()
                if stripped.startswith("//"):
                    continue
                # Unit tests may use anything; they are not the module graph.
                if stripped.startswith("#[cfg(test)]"):
                    in_tests = True
                if in_tests:
                    continue
                for target in re.findall(r"\bcrate::(\w+)", line):
                    if target in mods and target != module:
                        edges[module].add(target)
                for group in re.findall(r"\bcrate::\{([^}]*)\}", line):
                    for target in re.findall(r"(\w+)", group):
                        if target in mods and target != module:
                            edges[module].add(target)
    return edges


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    crates = sys.argv[1:] or CRATES
    failed = False
    for crate in crates:
        edges = graph(os.path.join(root, crate, "src"))
        print(f"{crate}:")
        for module in sorted(edges):
            print(f"  {module} -> {', '.join(sorted(edges[module])) or '-'}")
        for component in cycles(edges):
            failed = True
            print(f"  CYCLE: {' <-> '.join(component)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
