"""A tiny DOM for tests: parse a page, find elements by tag or data attribute, read their text.

Just enough to compare what a page shows with its JSON twin, without a browser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr", "image", "rect", "line"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list["Node | str"] = field(default_factory=list)

    def __getitem__(self, name: str) -> str:
        return self.attrs[name]

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def walk(self) -> Iterator["Node"]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find_all(self, tag: str | None = None, predicate: Callable[["Node"], bool] | None = None, **attrs: str | bool) -> list["Node"]:
        out = []
        for node in self.walk():
            if tag is not None and node.tag != tag:
                continue
            ok = True
            for key, want in attrs.items():
                name = "class" if key == "class_" else key.replace("_", "-")
                if want is True:
                    ok = name in node.attrs
                else:
                    ok = node.attrs.get(name) == want
                if not ok:
                    break
            if ok and (predicate is None or predicate(node)):
                out.append(node)
        return out

    def find(self, tag: str | None = None, **attrs: str | bool) -> "Node | None":
        found = self.find_all(tag, **attrs)
        return found[0] if found else None

    def one(self, tag: str | None = None, **attrs: str | bool) -> "Node":
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag}> {attrs}, found {len(found)}"
        return found[0]

    def text(self) -> str:
        parts: list[str] = []
        for child in self.children:
            parts.append(child if isinstance(child, str) else child.text())
        return " ".join(" ".join(parts).split())


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: (v if v is not None else "") for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def json_twin(doc: Node) -> str:
    link = doc.one("link", rel="alternate", type="application/json")
    return link["href"]
