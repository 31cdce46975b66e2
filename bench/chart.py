#!/usr/bin/env python3
"""Draws bench/results.svg from one run of bench/run. Standard library only.

Usage: bench/chart.py RESULTS_DIR OUT.svg
Left panel: the proxy's CPU µs per request (saturation, and each fixed rate), median with a
min-max whisker. Right panels: latency p50 / p99 / p99.9 at each fixed rate, log scale.
"""
import json
import math
import statistics
import sys
from xml.sax.saxutils import escape

ORDER = ["direct", "apex", "nginx", "haproxy", "haproxy-tcp", "relay", "traefik", "caddy"]
NAME = {"direct": "direct", "apex": "Apex", "nginx": "nginx", "haproxy": "HAProxy http",
        "haproxy-tcp": "HAProxy tcp", "relay": "floor relay", "traefik": "Traefik", "caddy": "Caddy"}
COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]


def vals(rows, proxy, test, path):
    out = []
    for r in rows:
        if r["proxy"] != proxy or r["test"] != test:
            continue
        m = r.get("r") or {}
        if m.get("error") or m.get("exit", 0) != 0:
            continue
        v = m
        for k in path.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            out.append(float(v))
    return out


def nice_max(x):
    if x <= 0:
        return 1
    e = 10 ** math.floor(math.log10(x))
    for m in (1, 1.5, 2, 2.5, 5, 10):
        if m * e >= x:
            return m * e
    return 10 * e


class Svg:
    def __init__(self, w, h):
        self.w, self.h, self.parts = w, h, []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", fill="#222"):
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{fill}">{escape(str(s))}</text>')

    def rect(self, x, y, w, h, fill):
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(0, w):.1f}" height="{max(0, h):.1f}" fill="{fill}"/>')

    def line(self, x1, y1, x2, y2, stroke="#222", width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" stroke-width="{width}"{d}/>')

    def render(self):
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" font-family="Helvetica, Arial, sans-serif">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(self.parts) + "\n</svg>\n")


def hbars(svg, x0, y0, width, proxies, series, title, unit, log=False):
    """Grouped horizontal bars: series = [(label, {proxy: [values]})]. Returns panel height."""
    label_w, row_h, bar_h = 95, 10 + 12 * len(series), 10
    svg.text(x0, y0, title, size=14, weight="bold")
    top = y0 + 14
    plot_x, plot_w = x0 + label_w, width - label_w - 60
    allv = [v for _, d in series for p in proxies for v in d.get(p, [])]
    if not allv:
        svg.text(x0, top + 20, "no data", fill="#888")
        return 40
    vmax = nice_max(max(allv))
    vmin = 10 ** math.floor(math.log10(max(min(v for v in allv if v > 0), 1e-3))) if log else 0

    def X(v):
        if log:
            v = max(v, vmin)
            return plot_x + plot_w * (math.log10(v) - math.log10(vmin)) / (math.log10(vmax) - math.log10(vmin) or 1)
        return plot_x + plot_w * v / vmax

    h = row_h * len(proxies)
    # grid
    if log:
        ticks, t = [], vmin
        while t <= vmax * 1.0001:
            ticks.append(t)
            t *= 10
    else:
        ticks = [vmax * i / 5 for i in range(6)]
    for t in ticks:
        svg.line(X(t), top, X(t), top + h, stroke="#ddd")
        svg.text(X(t), top + h + 13, f"{t:,.0f}" if t >= 1 else f"{t:g}", size=10, anchor="middle", fill="#555")
    svg.text(plot_x + plot_w / 2, top + h + 27, unit, size=11, anchor="middle", fill="#555")
    for i, p in enumerate(proxies):
        y = top + i * row_h + 5
        svg.text(plot_x - 6, y + row_h / 2, NAME[p], size=12, anchor="end",
                 weight="bold" if p == "apex" else "normal")
        for j, (lab, d) in enumerate(series):
            vs = d.get(p, [])
            if not vs:
                continue
            m = statistics.median(vs)
            yy = y + j * 12
            svg.rect(plot_x, yy, X(m) - plot_x, bar_h, COLORS[j % len(COLORS)])
            if len(vs) > 1:
                svg.line(X(min(vs)), yy + bar_h / 2, X(max(vs)), yy + bar_h / 2, stroke="#000")
            svg.text(X(max(vs)) + 4, yy + 9, f"{m:,.1f}" if m < 100 else f"{m:,.0f}", size=9, fill="#333")
    # legend
    lx = plot_x
    for j, (lab, _) in enumerate(series):
        svg.rect(lx, top + h + 34, 10, 10, COLORS[j % len(COLORS)])
        svg.text(lx + 14, top + h + 43, lab, size=11)
        lx += 16 + 7 * len(lab) + 20
    return 14 + h + 55


def main():
    d, outp = sys.argv[1], sys.argv[2]
    meta = json.load(open(f"{d}/meta.json"))
    rows = [json.loads(l) for l in open(f"{d}/raw.jsonl") if l.strip()]
    proxies = [p for p in ORDER if p in meta["proxies"]]
    peers = [p for p in proxies if p != "direct"]
    rates = meta.get("rates", [])
    W = 1000
    # layout: measure first with a scratch svg
    svg = Svg(W, 10)
    svg.text(20, 28, f"Apex vs peers, {meta['cores']} cores, {meta['mode']} run {meta['date_utc']} UTC, "
                     f"commit {meta['commit']} (median over {meta['rounds']} rounds; whisker: min-max)", size=13)
    y = 60
    series = [("saturation, pinned", {p: vals(rows, p, "sat-pinned", "proxy_us_per_req") for p in peers})]
    for rt in rates:
        series.append((f"at {rt // 1000}k req/s", {p: vals(rows, p, f"rate-{rt}", "proxy_us_per_req") for p in peers}))
    y += hbars(svg, 20, y, W - 40, peers, series, "Proxy CPU time per request (µs, lower is better)", "µs per request")
    for rt in rates:
        y += 20
        t = f"rate-{rt}"
        ser = [(lab, {p: vals(rows, p, t, f"lat_us.{k}") for p in proxies})
               for lab, k in (("p50", "p50"), ("p99", "p99"), ("p99.9", "p999"))]
        y += hbars(svg, 20, y, W - 40, proxies, ser,
                   f"Latency at {rt:,} req/s, open loop, 100 connections (µs, log scale, lower is better)",
                   "µs (log scale)", log=True)
    svg.h = int(y + 10)
    open(outp, "w").write(svg.render())


if __name__ == "__main__":
    main()
