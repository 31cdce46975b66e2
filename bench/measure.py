#!/usr/bin/env python3
"""Measurement primitives for bench/run (Linux /proc only, standard library only).

Subcommands (each prints one JSON object on stdout):
  quiet  --min-idle PCT --max-wait S --sample S
        Waits until the whole machine is at least PCT% idle over one sample (from
        /proc/stat), at most S seconds. Reports the last idle % and whether it gave up (busy).
  run    --kind wrk|loadgen [--proxy PIDS] [--upstream PIDS] [--label TEXT] -- CMD...
        Runs CMD (wrk or bench/loadgen), and around it samples utime+stime
        (/proc/PID/stat) of every process in the proxy's and the upstream's process
        trees, the load generator's own CPU (rusage of the child), and the machine's
        busy time (/proc/stat). Parses CMD's output and reports throughput, requests,
        CPU seconds per component, CPU shares (% of one core) and the proxy's CPU
        time per request in microseconds. With --label, also logs one line to stderr.
  mem    --pids PIDS
        Sums VmRSS and VmHWM (KiB) over the process trees of PIDS.
PIDS is a comma-separated list of root pids; their descendants are included.
"""
import json
import os
import re
import resource
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    """/proc/PID/stat after the command name (field 3 on), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rfind(")") + 2:].split()


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        rest = stat_fields(d)
        if rest is None:
            continue
        kids.setdefault(int(rest[1]), []).append(int(d))
    return kids


def tree(roots):
    """Root pids plus all their descendants that exist now."""
    if not roots:
        return []
    kids = children_map()
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        if p in out or not os.path.exists(f"/proc/{p}"):
            continue
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pids):
    """utime+stime of each process (all its threads, live and exited), in ticks."""
    t = {}
    for p in pids:
        rest = stat_fields(p)
        if rest is None:
            continue
        t[p] = int(rest[11]) + int(rest[12])  # fields 14 and 15: utime, stime
    return t


def machine_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]), idle


def parse_pids(s):
    return [int(x) for x in s.split(",") if x.strip()] if s else []


def delta_cpu(before, after):
    """CPU seconds spent between two samples by processes present in the second one.
    A process that appeared in between counts from zero (a new nginx worker, say)."""
    return sum(after[p] - before.get(p, 0) for p in after) / CLK_TCK


def mem(pids):
    rss = hwm = 0
    n = 0
    for p in tree(pids):
        try:
            with open(f"/proc/{p}/status") as f:
                st = f.read()
        except OSError:
            continue
        m1 = re.search(r"^VmRSS:\s+(\d+)", st, re.M)
        m2 = re.search(r"^VmHWM:\s+(\d+)", st, re.M)
        if m1:
            rss += int(m1.group(1))
            n += 1
        if m2:
            hwm += int(m2.group(1))
    return {"rss_kib": rss, "hwm_kib": hwm, "processes": n}


def quiet(min_idle, max_wait, sample):
    t0 = time.time()
    while True:
        a_tot, a_idle = machine_ticks()
        time.sleep(sample)
        b_tot, b_idle = machine_ticks()
        idle = 100.0 * (b_idle - a_idle) / max(1, b_tot - a_tot)
        waited = time.time() - t0
        if idle >= min_idle:
            return {"idle_pct": round(idle, 1), "waited_s": round(waited, 1), "busy": False}
        if waited >= max_wait:
            return {"idle_pct": round(idle, 1), "waited_s": round(waited, 1), "busy": True}


UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(out):
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m:
        r["requests"] = int(m.group(1))
        r["secs"] = float(m.group(2)) * UNIT[m.group(3)]
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    if m:
        r["lat_avg_us"] = float(m.group(1)) * UNIT[m.group(2)] * 1e6
    return r


def run(kind, proxy_roots, upstream_roots, cmd):
    px = tree(proxy_roots)
    up = tree(upstream_roots)
    p0, u0 = cpu_ticks(px), cpu_ticks(up)
    m0 = machine_ticks()
    t0 = time.time()
    # RUSAGE_CHILDREN covers the load generator (our only child) once it is reaped.
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p1, u1 = cpu_ticks(tree(proxy_roots)), cpu_ticks(tree(upstream_roots))
    m1 = machine_ticks()
    res = {"exit": proc.returncode, "wall_s": round(wall, 3)}
    if kind == "wrk":
        res.update(parse_wrk(out))
        done = res.get("requests", 0)
    else:
        lines = [l for l in out.splitlines() if l.startswith("{")]
        d = json.loads(lines[-1]) if lines else {}
        res.update(d)
        done = d.get("ok", 0) + d.get("warmup_done", 0) + d.get("bad_status", 0)
        if d.get("mode") in ("get", "put"):
            done = 1
    proxy_cpu = delta_cpu(p0, p1) if proxy_roots else None
    up_cpu = delta_cpu(u0, u1)
    gen_cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    busy = (m1[0] - m0[0]) - (m1[1] - m0[1])
    ncpu = os.cpu_count() or 1
    res["completed"] = done
    res["cpu_s"] = {
        "proxy": None if proxy_cpu is None else round(proxy_cpu, 3),
        "upstream": round(up_cpu, 3),
        "loadgen": round(gen_cpu, 3),
    }
    res["cpu_share_pct"] = {  # % of one core over the window
        "proxy": None if proxy_cpu is None else round(100 * proxy_cpu / wall, 1),
        "upstream": round(100 * up_cpu / wall, 1),
        "loadgen": round(100 * gen_cpu / wall, 1),
        "machine": round(100 * ncpu * busy / max(1, m1[0] - m0[0]), 1),  # all cores, max 100*ncpu
    }
    # Whatever else ran during the window (other users, kernel threads): machine minus ours.
    # A large value means the measurement was disturbed even if the machine was quiet before.
    sh = res["cpu_share_pct"]
    sh["other"] = round(max(0.0, sh["machine"] - (sh["proxy"] or 0) - sh["upstream"] - sh["loadgen"]), 1)
    if proxy_cpu is not None and done:
        res["proxy_us_per_req"] = round(1e6 * proxy_cpu / done, 2)
    if done:
        res["upstream_us_per_req"] = round(1e6 * up_cpu / done, 2)
    if proc.returncode != 0 or (kind == "wrk" and "rps" not in res):
        res["error"] = (err.strip() or out.strip())[-400:]
    if kind == "wrk":
        res["raw"] = out[-1500:]
    return res


def summary(r):
    """One line for bench/run's log."""
    sh = r.get("cpu_share_pct", {})
    cpu = f"cpu% proxy={sh.get('proxy')} upstream={sh.get('upstream')} load={sh.get('loadgen')} other={sh.get('other')}"
    if r.get("error"):
        return f"ERROR exit={r.get('exit')}: {r['error'][-200:]}"
    if "rps" in r:
        return (f"{r['rps']:,.0f} req/s, proxy {r.get('proxy_us_per_req', '-')} us/req, {cpu}, "
                f"non2xx={r.get('non2xx')} socket_errors={r.get('socket_errors')}")
    if r.get("mode") == "rate":
        l = r.get("lat_us", {})
        return (f"achieved {r.get('achieved_rps'):,.0f}/s, p50={l.get('p50')} p99={l.get('p99')} p99.9={l.get('p999')} "
                f"max={l.get('max')} us, proxy {r.get('proxy_us_per_req', '-')} us/req, errors={r.get('errors')} "
                f"incomplete={r.get('incomplete')}, {cpu}")
    if r.get("mode") in ("get", "put"):
        return f"status={r.get('status')} {r.get('mb_s')} MB/s, proxy CPU {r['cpu_s'].get('proxy')} s"
    return json.dumps(r)[:200]


def main():
    a = sys.argv[1:]
    if not a:
        print(__doc__)
        sys.exit(2)
    sub = a[0]
    opts, cmd = {}, []
    i = 1
    while i < len(a):
        if a[i] == "--":
            cmd = a[i + 1:]
            break
        opts[a[i].lstrip("-")] = a[i + 1] if i + 1 < len(a) else ""
        i += 2
    if sub == "quiet":
        r = quiet(float(opts.get("min-idle", 80)), float(opts.get("max-wait", 30)), float(opts.get("sample", 1)))
    elif sub == "run":
        r = run(opts.get("kind", "wrk"), parse_pids(opts.get("proxy", "")), parse_pids(opts.get("upstream", "")), cmd)
        if opts.get("label"):
            print(f"[bench {time.strftime('%H:%M:%S', time.gmtime())}] {opts['label']}: {summary(r)}", file=sys.stderr)
    elif sub == "mem":
        r = mem(parse_pids(opts.get("pids", "")))
    else:
        print(__doc__)
        sys.exit(2)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
