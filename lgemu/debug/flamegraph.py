"""A flame graph drawn by lgemu: the profile as an SVG any browser shows, no other tool.

Brendan Gregg's layout: the root (``all``) along the bottom, each frame's callees stacked
on top of it, widths proportional to samples, siblings in alphabetical order (so the same
profile always draws the same picture).  Every box has a tooltip (SVG ``<title>``) with its
samples, share and guest time; names that fit are written in the box.  Colours come from a
hash of the name, warm for kernel frames and blue for user space, so a function keeps its
colour from one graph to the next.  No script: the file is static and deterministic.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

WIDTH = 1200
ROW = 17
MARGIN = 10
TOP = 60  # title and subtitle
CHAR_W = 7  # a 12 px monospace character, roughly
MIN_W = 0.3  # narrower boxes are not drawn


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(samples: Mapping[tuple[str, ...], int]) -> _Node:
    root = _Node("all")
    for stack, n in samples.items():
        root.count += n
        node = root
        for name in stack:
            node = node.children.setdefault(name, _Node(name))
            node.count += n
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _colour(name: str) -> str:
    h = zlib.crc32(name.encode())
    if name.startswith("[user"):
        return f"rgb({80 + h % 50},{130 + (h >> 8) % 60},{200 + (h >> 16) % 55})"
    return f"rgb({205 + h % 50},{80 + (h >> 8) % 130},{(h >> 16) % 60})"


def flame_graph(samples: Mapping[tuple[str, ...], int], title: str, subtitle: str,
                ns_per_sample: int) -> str:
    """The SVG text for `samples` (stack, outermost first → count)."""
    root = _tree(samples)
    depth = _depth(root)
    height = TOP + depth * ROW + MARGIN
    total = root.count or 1
    scale = (WIDTH - 2 * MARGIN) / total
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="12">',
           "<style>rect:hover{stroke:#000;stroke-width:1}text{pointer-events:none}</style>",
           f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f0"/>',
           f'<text x="{WIDTH // 2}" y="24" text-anchor="middle" font-size="17">'
           f"{escape(title)}</text>",
           f'<text x="{WIDTH // 2}" y="44" text-anchor="middle" fill="#555">'
           f"{escape(subtitle)}</text>"]

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.count * scale
        if w < MIN_W:
            return
        y = height - MARGIN - (level + 1) * ROW
        share = 100 * node.count / total
        ms = node.count * ns_per_sample / 1e6
        name = escape(node.name)
        out.append(f'<g><title>{name} ({node.count} samples, {share:.2f}%, {ms:.3f} ms)'
                   f'</title><rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{ROW - 1}" '
                   f'fill="{_colour(node.name) if level else "rgb(220,220,220)"}" rx="2"/>')
        fits = int((w - 6) // CHAR_W)
        if fits >= 3:
            label = node.name if len(node.name) <= fits else node.name[:fits - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + ROW - 5}">{escape(label)}</text>')
        out.append("</g>")
        child_x = x
        for name in sorted(node.children):
            child = node.children[name]
            draw(child, child_x, level + 1)
            child_x += child.count * scale

    draw(root, MARGIN, 0)
    out.append("</svg>\n")
    return "\n".join(out)
