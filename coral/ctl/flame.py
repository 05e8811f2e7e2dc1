"""A profile's stacks for people and tools: folded stacks (one line per
distinct stack, `outer;...;inner COUNT`, as flamegraph.pl and speedscope
read them), the functions that use the most CPU, and an interactive
flamegraph in one self-contained HTML file (inline SVG drawn by a little
JavaScript: click a box to zoom to it, hover for its numbers; nothing is
fetched)."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from coral.proto import coral_pb2 as pb

NO_STACK = "[stack not kept]"


def frame_name(frame: pb.StackFrame) -> str:
    """A frame as folded stacks write it: no ';' (it separates frames), no newline."""
    name = frame.function.replace(";", ":").replace("\n", " ") or "[unknown]"
    return name


def folded(processes: Iterable[pb.ProcessProfile]) -> list[tuple[tuple[str, ...], int]]:
    """Every distinct stack of the service (its processes merged), outermost
    frame first, with its samples; most sampled first, then by name."""
    counts: Counter[tuple[str, ...]] = Counter()
    for process in processes:
        for stack in process.stacks:
            names = tuple(frame_name(f) for f in stack.frames) or (NO_STACK,)
            counts[names] += stack.count
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def folded_lines(stacks: list[tuple[tuple[str, ...], int]]) -> list[str]:
    return [f"{';'.join(names)} {count}" for names, count in stacks]


@dataclass(frozen=True)
class FunctionShare:
    function: str
    self_samples: int  # samples where it was running
    total_samples: int  # samples where it was on the stack


def top_functions(stacks: list[tuple[tuple[str, ...], int]]) -> list[FunctionShare]:
    """By samples where the function itself ran, then by samples it was on the stack."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for names, count in stacks:
        own[names[-1]] += count
        for name in set(names):  # recursion counts once per sample
            total[name] += count
    return sorted((FunctionShare(n, own[n], total[n]) for n in total),
                  key=lambda f: (-f.self_samples, -f.total_samples, f.function))


@dataclass
class _Node:
    name: str
    value: int = 0
    children: dict[str, _Node] = field(default_factory=dict)

    def to_json(self) -> list[object]:
        kids = sorted(self.children.values(), key=lambda n: n.name)
        return [self.name, self.value, [k.to_json() for k in kids]]


def tree(stacks: list[tuple[tuple[str, ...], int]], root_name: str) -> _Node:
    root = _Node(root_name)
    for names, count in stacks:
        root.value += count
        node = root
        for name in names:
            node = node.children.setdefault(name, _Node(name))
            node.value += count
    return root


def flamegraph_html(stacks: list[tuple[tuple[str, ...], int]], title: str, subtitle: str,
                    unit: str = "samples") -> str:
    """One HTML file, readable offline: the tree as JSON, drawn by the script
    below. `unit`: what the counts are, "samples" or "ns" (shown as a time)."""
    data = json.dumps(tree(stacks, "all").to_json(), separators=(",", ":")).replace("</", "<\\/")
    return (_PAGE.replace("%TITLE%", html.escape(title)).replace("%SUBTITLE%", html.escape(subtitle))
            .replace("%UNIT%", json.dumps(unit)).replace("%DATA%", data))


# Written for Coral; boxes are <rect> and <text> in one <svg>, so the names
# are in the DOM (tests read them) and the picture scales with the window.
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>%TITLE%</title>
<style>
body { font: 13px sans-serif; margin: 12px; background: #fff; color: #222; }
h1 { font-size: 16px; margin: 0 0 2px 0; }
#sub { color: #555; margin-bottom: 8px; }
#bar { margin: 4px 0 8px 0; min-height: 18px; }
#reset { display: none; cursor: pointer; color: #06c; text-decoration: underline; margin-right: 12px; }
svg { display: block; width: 100%; }
svg rect { stroke: #fff; stroke-width: 0.5; cursor: pointer; }
svg text { font: 12px monospace; fill: #000; pointer-events: none; }
#tip { position: fixed; display: none; background: #ffe; border: 1px solid #999; padding: 4px 6px;
       font: 12px monospace; pointer-events: none; max-width: 600px; word-break: break-all; }
</style></head>
<body>
<h1>%TITLE%</h1>
<div id="sub">%SUBTITLE%</div>
<div id="bar"><span id="reset">Reset zoom</span><span id="info">Click a box to zoom to it; hover for its samples.</span></div>
<svg id="flame" xmlns="http://www.w3.org/2000/svg"></svg>
<div id="tip"></div>
<script>
"use strict";
const DATA = %DATA%, UNIT = %UNIT%;
const ROW = 18, NS = "http://www.w3.org/2000/svg";
const svg = document.getElementById("flame"), tip = document.getElementById("tip");
const reset = document.getElementById("reset"), info = document.getElementById("info");
const total = DATA[1];
function depthOf(n) { let d = 0; for (const k of n[2]) d = Math.max(d, depthOf(k)); return d + 1; }
function color(name) {
  let h = 0; for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return "rgb(" + (205 + h % 50) + "," + (90 + (h >> 8) % 110) + "," + (40 + (h >> 16) % 50) + ")";
}
function pct(v) { return (100 * v / total).toFixed(1) + "%"; }
function amount(v) {
  if (UNIT !== "ns") return v + " " + UNIT;
  const units = [[1e9, "s"], [1e6, "ms"], [1e3, "\\u00b5s"]];
  for (const [size, name] of units) if (v >= size) return (v / size).toPrecision(3) + " " + name;
  return v + " ns";
}
function draw(focus, path) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = svg.clientWidth || 1200, rows = path.length + depthOf(focus);
  svg.setAttribute("height", rows * ROW);
  svg.setAttribute("viewBox", "0 0 " + width + " " + rows * ROW);
  const scale = width / focus[1];
  function box(node, x, depth, w, onclick) {
    const y = (rows - depth - 1) * ROW;
    const g = document.createElementNS(NS, "g");
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("x", x); r.setAttribute("y", y); r.setAttribute("width", Math.max(w, 0.5));
    r.setAttribute("height", ROW - 1); r.setAttribute("fill", color(node[0]));
    g.appendChild(r);
    if (w > 30) {
      const t = document.createElementNS(NS, "text");
      const fit = Math.floor((w - 6) / 7.3);
      t.setAttribute("x", x + 3); t.setAttribute("y", y + ROW - 5);
      t.textContent = node[0].length <= fit ? node[0] : node[0].slice(0, Math.max(fit - 2, 1)) + "..";
      g.appendChild(t);
    }
    g.addEventListener("mousemove", e => {
      tip.textContent = node[0] + " \\u2014 " + amount(node[1]) + " (" + pct(node[1]) + ")";
      tip.style.display = "block"; tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px";
    });
    g.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    g.addEventListener("click", onclick);
    svg.appendChild(g);
  }
  path.forEach((n, i) => box(n, 0, i, width, () => zoom(n, path.slice(0, i))));
  (function walk(node, x, depth, trail) {
    const w = node[1] * scale;
    box(node, x, depth, w, () => zoom(node, trail));
    let cx = x;
    for (const k of node[2]) { walk(k, cx, depth + 1, trail.concat([node])); cx += k[1] * scale; }
  })(focus, 0, path.length, path);
}
let current = [DATA, []];
function zoom(node, path) {
  current = [node, path];
  reset.style.display = path.length ? "inline" : "none";
  info.textContent = path.length ? node[0] + ": " + amount(node[1]) + " (" + pct(node[1]) + ")" :
    "Click a box to zoom to it; hover for its " + (UNIT === "ns" ? "time." : "samples.");
  draw(node, path);
}
reset.addEventListener("click", () => zoom(DATA, []));
window.addEventListener("resize", () => draw(current[0], current[1]));
zoom(DATA, []);
</script>
</body></html>
"""
