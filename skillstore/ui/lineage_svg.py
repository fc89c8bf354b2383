"""A lineage graph as server-side SVG: layered by depth, ancestors above, descendants below."""

from __future__ import annotations

from html import escape

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 40, 24, 56, 12
LABEL_W = 120  # room right of the last column for the longest edge kind (recompressed_from)
FILL = {"promoted": "#d7f0d7", "rejected": "#f6d5d5", "retired": "#e4e4e4",
        "candidate": "#fdf0c8", "base": "#dde7f6"}


def _layers(up: dict, down: dict) -> dict[str, int]:
    """Row of every node: the root 0, ancestors at minus their depth, descendants at plus."""
    rows = {up["root"]: 0}
    for node in up["nodes"]:
        rows[node["id"]] = -node["depth"]
    for node in down["nodes"]:
        rows.setdefault(node["id"], node["depth"])
    return rows


def _label(node: dict) -> str:
    return node.get("name") or node["id"]


def lineage_svg(up: dict, down: dict) -> str:
    """One SVG of both walks (the API's lineage JSON); each pack node is a link to its page."""
    info = {n["id"]: n for n in (*up["nodes"], *down["nodes"])}
    rows = _layers(up, down)
    by_row: dict[int, list[str]] = {}
    for key in sorted(rows, key=lambda k: (rows[k], _label(info.get(k, {"id": k})))):
        by_row.setdefault(rows[key], []).append(key)
    top = min(by_row)
    width = (max(len(keys) for keys in by_row.values()) * (NODE_W + GAP_X) - GAP_X + 2 * PAD
             + LABEL_W)
    height = len(by_row) * (NODE_H + GAP_Y) - GAP_Y + 2 * PAD
    where = {}
    for row, keys in by_row.items():
        span = len(keys) * (NODE_W + GAP_X) - GAP_X
        for i, key in enumerate(keys):
            x = (width - LABEL_W - span) / 2 + i * (NODE_W + GAP_X)
            where[key] = (x, PAD + (row - top) * (NODE_H + GAP_Y))
    edges = {(e["child"], e["parent"], e["kind"]) for e in (*up["edges"], *down["edges"])}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
             'aria-label="lineage graph">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
             '</defs>']
    for child, parent, kind in sorted(edges):
        (cx, cy), (px, py) = where[child], where[parent]
        x1, y1, x2, y2 = cx + NODE_W / 2, cy, px + NODE_W / 2, py + NODE_H
        parts.append(f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" '
                     'stroke="#555" marker-end="url(#arrow)"/>'
                     f'<text class="edge" x="{(x1 + x2) / 2 + 4:.0f}" y="{(y1 + y2) / 2:.0f}">'
                     f'{escape(kind)}</text>')
    for key, (x, y) in where.items():
        node = info.get(key, {"id": key})
        status = node.get("status") or node.get("type", "")
        stroke, thick = ("#000", 2) if key == up["root"] else ("#888", 1)
        box = (f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="6" '
               f'fill="{FILL.get(status, "#fff")}" stroke="{stroke}" stroke-width="{thick}"/>'
               f'<text x="{x + NODE_W / 2:.0f}" y="{y + 17:.0f}" text-anchor="middle">'
               f'{escape(_label(node))}</text>'
               f'<text class="sub" x="{x + NODE_W / 2:.0f}" y="{y + 32:.0f}" '
               f'text-anchor="middle">{escape(status)}</text>')
        if node.get("type") == "pack":
            box = (f'<a href="/ui/packs/{node["pack_id"]}" class="node" '
                   f'data-pack="{node["pack_id"]}">{box}</a>')
        parts.append(box)
    parts.append("</svg>")
    return "".join(parts)
