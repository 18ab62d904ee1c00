"""AudioSet's ontology (ontology.json) as a relation between sound-event names: which labels name the same
sound, at different depths of the tree.

Two labels are *related* when one is the other or an ancestor of it ("Speech" and "Male speech, man
speaking"; "Music" and "Guitar"). Edit groups and separation mixtures use it to keep sounds apart: a
background with speech gets no "Add male speech", a mixture whose target is guitar gets no music as
interference. A clip's weak labels list a class with its ancestors; `collapse` keeps the most specific
ones, so Music + Guitar counts as one event (Guitar). Names are compared lower case; a name the ontology
does not know is related to itself only.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path


class Ontology:
    def __init__(self, nodes: list[dict] = ()):
        """`nodes`: ontology.json's list of {id, name, child_ids, ...}."""
        names = {n["id"]: n["name"].lower() for n in nodes}
        self.parents: dict[str, set[str]] = {}
        for node in nodes:
            for child in node.get("child_ids") or []:
                if child in names:
                    self.parents.setdefault(names[child], set()).add(names[node["id"]])
        self.names = set(names.values())

    @classmethod
    def load(cls, path: str | Path | None) -> Ontology:
        """The ontology at `path`; None: an empty one (labels are related only when equal)."""
        return _load(str(path)) if path else cls()

    def ancestors(self, name: str) -> frozenset[str]:
        """The name and every name above it (a DAG: AudioSet gives some classes two parents)."""
        name, seen, todo = name.lower(), set(), [name.lower()]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(self.parents.get(node, ()))
        return frozenset(seen)

    def related(self, a: str, b: str) -> bool:
        """One label is the other, or above or below it."""
        a, b = a.lower(), b.lower()
        return a == b or a in self.ancestors(b) or b in self.ancestors(a)

    def overlaps(self, labels: list[str], others: list[str]) -> bool:
        """Some label of one list is related to some label of the other."""
        return any(self.related(a, b) for a in labels for b in others)

    def collapse(self, labels: list[str]) -> list[str]:
        """Distinct lower-case labels without those that are an ancestor of another one: the events."""
        names = sorted({x.lower() for x in labels})
        above = set().union(*(self.ancestors(n) - {n} for n in names)) if names else set()
        return [n for n in names if n not in above]


@lru_cache(maxsize=4)
def _load(path: str) -> Ontology:
    try:
        nodes = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"ontology {path}: cannot read AudioSet's ontology.json ({e})") from None
    if not isinstance(nodes, list) or not all(isinstance(n, dict) and "id" in n and "name" in n for n in nodes):
        raise ValueError(f"ontology {path}: expected AudioSet's ontology.json (a list of {{id, name, child_ids}})")
    return Ontology(nodes)
