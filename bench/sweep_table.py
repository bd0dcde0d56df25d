"""The size sweep's table (bench/compare_pytorch.sh --sweep): reads the JSON lines the sweep appends
({"side", "case", "round", "load", "result"}) and prints, per point, each side's best step time per
image (the smallest over all its timed steps and rounds: on a shared machine the least disturbed
run), the ratio PyTorch time / hakd time (bold when >= 1.5), hakd's executed GFLOP/s in its best
step and that as a share of the fp32 peak (the larger of OpenBLAS sgemm and oneDNN matmul 2048^3,
best of the bench_peak runs recorded in the file), the load average range seen when the runs
started, and how many runs per side, and the share of the peak hakd would need for 1.5x
PyTorch's time with the multiply-adds it executes ("1.5x needs": 1.5 x GFLOP/s / ratio; above 100%
no fp32 code could reach 1.5x with these products: the step is bound by multiply-add throughput;
the summary puts the points below 1.5x in three classes: above 100%, 85-100%, below 85%);
then ms per image against input pixels, one row per model
and side (cost as work grows). --tsv FILE writes the points for bench_sweep_plot.

usage: sweep_table.py RESULTS.jsonl [--tsv FILE] [--only REGEX] [--peak GFLOPS] [--prefix CMD] [--max-round R]
--peak replaces the recorded fp32 peak (e.g. one measured on a quiet machine: on a busy one
bench_peak's loops get a fraction of the cores). --prefix CMD keeps only the runs made under that
PREFIX of compare_pytorch.sh (e.g. "chrt -f 10": real-time runs, not mixed with earlier
unprioritised runs of the same points; "" keeps only those); the peak lines are kept. --max-round R
keeps only rounds 1..R (what the table said before rounds were added to some points)."""
import argparse
import collections
import json
import re


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results")
    ap.add_argument("--tsv")
    ap.add_argument("--only", help="keep the points whose 'MODEL MODE SIZExSIZE bB' name matches")
    ap.add_argument("--peak", type=float, help="fp32 peak GFLOP/s for the share column")
    ap.add_argument("--prefix", help="keep only the runs made under this PREFIX (compare_pytorch.sh)")
    ap.add_argument("--max-round", type=int, help="keep only rounds 1..R")
    args = ap.parse_args()
    points = collections.OrderedDict()
    peaks = []
    for line in open(args.results):
        r = json.loads(line)
        if r["side"] == "peak":
            peaks.append(r["result"])
            continue
        if args.only and not re.search(args.only, r["case"]):
            continue
        if args.prefix is not None and r.get("prefix", "") != args.prefix:
            continue
        if args.max_round is not None and r.get("round", 0) > args.max_round:
            continue
        res = r["result"]
        key = (res["model"], res["mode"], int(res["size"].split("x")[0]), res["batch"])
        p = points.setdefault(key, {"hakd": [], "torch": [], "load": [], "gflops": []})
        p[r["side"]].append(res["ms_min"] / res["batch"])
        if r["side"] == "hakd":
            p["gflops"].append(res["flops_per_iter"] / (res["ms_min"] * 1e-3) / 1e9)
        p["load"].append(float(r.get("load", 0)))
    rows = []
    for (model, mode, size, batch), p in sorted(points.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3], kv[0][2])):
        if p["hakd"] and p["torch"]:
            rows.append((model, mode, size, batch, min(p["hakd"]), min(p["torch"]), min(p["load"]), max(p["load"]),
                         min(len(p["hakd"]), len(p["torch"])), max(p["gflops"])))
    peak = max([max(pk["sgemm_openblas"], pk["matmul_dnnl"]) for pk in peaks] or [0])
    if args.peak:
        peak = args.peak
    if peaks:
        best = lambda key: max(pk[key] for pk in peaks)
        print("peaks (best of %d bench_peak runs, GFLOP/s): fp32 FMA loop %.0f, OpenBLAS sgemm 2048^3 %.0f (%s), "
              "oneDNN matmul %.0f; bf16 dot-product loop %.0f, oneDNN bf16 matmul %.0f" % (
                  len(peaks), best("fma_fp32"), best("sgemm_openblas"), peaks[0]["openblas_core"],
                  best("matmul_dnnl"), best("dot_bf16"), best("matmul_dnnl_bf16")))
    print("share of peak against %.0f GFLOP/s%s" % (peak, " (--peak)" if args.peak else ""))
    print()
    print("| model | mode | batch | size | hakd ms/img | PyTorch ms/img | PyTorch/hakd | hakd GFLOP/s | of peak "
          "| 1.5x needs | load | runs/side |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for model, mode, size, batch, h, t, lo, hi, n, gf in rows:
        ratio = t / h
        cell = "**%.2f**" % ratio if ratio >= 1.5 else "%.2f" % ratio
        share = "%.0f%%" % (100 * gf / peak) if peak > 0 else "n/a"
        needs = "%.0f%%" % (100 * 1.5 * gf / ratio / peak) if peak > 0 else "n/a"
        print("| %s | %s | %d | %dx%d | %.1f | %.1f | %s | %.0f | %s | %s | %.1f-%.1f | %d |" % (
            model, mode, batch, size, size, h, t, cell, gf, share, needs, lo, hi, n))
    below = ["%s %s %dx%d b%d (%.2f)" % (m, mo, s, s, b, t / h) for m, mo, s, b, h, t, *_ in rows if t / h < 1.0]
    fast = sum(1 for m, mo, s, b, h, t, *_ in rows if t / h >= 1.5)
    print()
    print("points: %d; hakd at least as fast at %d, >= 1.5x at %d; below 1.0: %s" % (
        len(rows), len(rows) - len(below), fast, ", ".join(below) if below else "none"))
    if peak > 0:
        short = [r for r in rows if r[5] / r[4] < 1.5]
        name = lambda r: "%s %s %dx%d b%d" % (r[0], r[1], r[2], r[2], r[3])
        need = lambda r: 100 * 1.5 * r[9] / (r[5] / r[4]) / peak
        classes = (("1.5x would need more than the peak (bound by multiply-adds)", lambda n: n > 100),
                   ("1.5x would need 85-100% of the peak (the step at the machine's limit)", lambda n: 85 <= n <= 100),
                   ("1.5x fits under 85% of the peak", lambda n: n < 85))
        for label, test in classes:
            sel = ["%s (%.2f, needs %.0f%%)" % (name(r), r[5] / r[4], need(r)) for r in short if test(need(r))]
            print("below 1.5x where %s: %d%s" % (label, len(sel), ": " + ", ".join(sel) if sel else ""))
    # cost as work grows: ms per image against input pixels, one row per model and side
    sizes = sorted({r[2] for r in rows})
    print()
    print("ms per image by input pixels (best run per side):")
    print()
    print("| mode, batch | model | side | " + " | ".join("%dx%d (%.2g px)" % (z, z, z * z) for z in sizes) + " |")
    print("|---|---|---|" + "---:|" * len(sizes))
    cells = {(r[1], r[3], r[0], z): (r[4], r[5]) for r in rows for z in [r[2]]}
    for mode, batch in sorted({(r[1], r[3]) for r in rows}):
        for model in sorted({r[0] for r in rows if r[1] == mode and r[3] == batch}):
            for side, k in (("hakd", 0), ("PyTorch", 1)):
                vals = [cells.get((mode, batch, model, z)) for z in sizes]
                print("| %s, %d | %s | %s | " % (mode, batch, model, side) +
                      " | ".join("%.0f" % v[k] if v else "-" for v in vals) + " |")
    if args.tsv:
        with open(args.tsv, "w") as f:
            f.write("model\tmode\tbatch\tsize\tpixels\thakd_ms_per_image\ttorch_ms_per_image\n")
            for model, mode, size, batch, h, t, *_ in rows:
                f.write("%s\t%s\t%d\t%d\t%d\t%.3f\t%.3f\n" % (model, mode, batch, size, size * size, h, t))


if __name__ == "__main__":
    main()
