#!/usr/bin/env python3
"""Turn the raw figures bench/run left in WORK into latest.json, latest.md and ratios.png.

usage: report.py WORK_DIR RESULTS_DIR

WORK_DIR holds meta.tsv (key<TAB>value) and one <fs>.round<N>.tsv per filesystem and round
(metric<TAB>value, plus a 'status' line). Only the standard library is needed for
the table; the chart needs matplotlib and is skipped (with a warning) without it.
"""
import json
import math
import os
import sys

ENCRYPTED = ["vikingfs", "gocryptfs", "securefs"]
PLAIN = ["passthrough", "bindfs"]  # bindfs only stands in when fuse-passthrough did not run

# key, column header ({stream}, {small}... filled from meta), better, format
METRICS = [
    ("untar_s", "untar s", "lower", "s"),
    ("ls_s", "ls -lR s", "lower", "s"),
    ("cat_s", "cat all s", "lower", "s"),
    ("rm_s", "rm -rf s", "lower", "s"),
    ("write_MBps", "write MB/s ({stream}, fsync)", "higher", "int"),
    ("read_MBps", "read MB/s (cold)", "higher", "int"),
    ("randread_iops", "4k rand read IOPS", "higher", "int"),
    ("randwrite_iops", "4k rand write IOPS (verified)", "higher", "int"),
    ("tail_small_ops", "4k write at end, {small} file, ops/s", "higher", "int"),
    ("tail_big_ops", "4k write at end, {stream} file, ops/s", "higher", "int"),
    ("tail_ratio", "end-write {stream}/{small}", "higher", "ratio"),
    ("rss_mib", "peak RSS MiB", "lower", "mib"),
]
# columns whose "% of passthrough" is a target; the others are shown for information
PASSTHROUGH_TARGET_KEYS = {"write_MBps", "read_MBps"}
# the columns of issue 6's table: the "≥ 1.0× the best encrypted peer" target is on these
PEER_TARGET_KEYS = ["untar_s", "ls_s", "cat_s", "rm_s", "write_MBps", "read_MBps", "randread_iops", "randwrite_iops"]
RSS_LIMIT_MIB = 64



def uring_note(value):
    """What the fuse module's enable_uring was during the run (bench/run --io-uring)."""
    if value == "Y":
        return ("FUSE over io_uring on (fuse enable_uring=Y): vikingfs and fuse-passthrough are served over it; "
                "gocryptfs and securefs do not ask for it and use /dev/fuse.")
    if value == "N":
        return "FUSE over io_uring off (fuse enable_uring=N): every mount uses /dev/fuse."
    return "This kernel has no FUSE over io_uring: every mount uses /dev/fuse."

def read_tsv(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or "\t" not in line:
                continue
            k, v = line.split("\t", 1)
            out[k] = v
    return out


def size_label(mib):
    mib = int(mib)
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


def fmt(value, kind):
    if value is None:
        return "–"
    if kind == "s":
        return f"{value:.2f}"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "mib":
        return f"{value:.1f}"
    return str(value)


def ratio_for(subject_value, best_value, better):
    """>1 means the subject is better, whatever the column's direction."""
    if subject_value is None or best_value is None or subject_value <= 0 or best_value <= 0:
        return None
    return best_value / subject_value if better == "lower" else subject_value / best_value


def best_of(values, better):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return min(values) if better == "lower" else max(values)


def main():
    work, results = sys.argv[1], sys.argv[2]
    meta = read_tsv(os.path.join(work, "meta.tsv"))
    order = meta.get("filesystems", "").split()
    subject = meta.get("subject", "vikingfs")
    labels = {"stream": size_label(meta.get("stream_mib", 1024)), "small": size_label(meta.get("small_file_mib", 1))}

    fs_data = {}
    rounds = int(meta.get("rounds", 1))
    for name in order:
        runs = []
        for r in range(1, rounds + 1):
            path = os.path.join(work, f"{name}.round{r}.tsv")
            runs.append(read_tsv(path) if os.path.exists(path) else {"status": "not run"})
        # Each figure's best over the rounds (the machine's drift favours none), except peak RSS: the worst.
        figures, per_round = {}, {}
        for key, _, better, _ in METRICS:
            values = []
            for raw in runs:
                try:
                    values.append(float(raw[key]))
                except (KeyError, ValueError):
                    pass
            if values:
                per_round[key] = values
                figures[key] = max(values) if key == "rss_mib" else best_of(values, better)
        if "tail_small_ops" in figures and "tail_big_ops" in figures and figures["tail_small_ops"] > 0:
            figures["tail_ratio"] = figures["tail_big_ops"] / figures["tail_small_ops"]
        statuses = [raw.get("status", "unknown") for raw in runs]
        status = "ok" if all(st == "ok" for st in statuses) else "; ".join(
            f"round {i + 1}: {st}" for i, st in enumerate(statuses) if st != "ok")
        fs_data[name] = {"status": status, "figures": figures, "per_round": per_round,
                         "raw": [{k: v for k, v in raw.items() if k != "status"} for raw in runs]}

    measured = [n for n in order if fs_data[n]["figures"]]
    peers = [n for n in ENCRYPTED if n != subject and n in measured]
    # the plain reference: fuse-passthrough if it ran cleanly, else bindfs, else whichever has figures
    reference = (next((n for n in PLAIN if n in measured and fs_data[n]["status"] == "ok"), None)
                 or next((n for n in PLAIN if n in measured), None))
    subj = fs_data.get(subject, {}).get("figures", {})

    ratios, best_peer, of_ref = {}, {}, {}
    for key, _, better, _ in METRICS:
        vals = {p: fs_data[p]["figures"].get(key) for p in peers}
        b = best_of(vals.values(), better)
        if b is not None:
            best_peer[key] = {"value": b, "by": [p for p, v in vals.items() if v == b][0]}
        if key == "tail_ratio":
            continue  # a ratio of ratios says nothing useful; the column itself is the figure
        ratios[key] = ratio_for(subj.get(key), b, better)
        if reference and key != "rss_mib":
            of_ref[key] = ratio_for(subj.get(key), fs_data[reference]["figures"].get(key), better)

    headers = [h.format(**labels) for _, h, _, _ in METRICS]
    lines = []
    lines.append(f"Command: `{meta.get('command', 'bench/run')}` — mode **{meta.get('mode')}**, {meta.get('date')}")
    lines.append("")
    lines.append(
        f"Tree: Linux 6.1 source ({meta.get('tree_dirs')}), {int(meta.get('tree_files', 0)):,} files "
        f"({int(meta.get('tree_entries', 0)):,} entries), {int(meta.get('tree_bytes', 0)) / 1e6:.0f} MB of file data"
        + (f" ({int(meta['tree_tar_bytes']) / 1e6:.0f} MB tar)" if meta.get("tree_tar_bytes") else "")
        + f"; streaming file {labels['stream']}; "
        f"fio: {meta.get('fio_jobs')} jobs × {meta.get('fio_size')}, psync, O_DIRECT, "
        f"randread {meta.get('fio_runtime')} s, randwrite {meta.get('randwrite_loops')} verified pass(es). "
        f"Machine: {meta.get('cpu')}, kernel {meta.get('kernel')}. All filesystems over one tmpfs. "
        + uring_note(meta.get("fuse_io_uring"))
    )
    lines.append("")
    lines.append("| | " + " | ".join(headers) + " |")
    lines.append("|---|" + "---|" * len(headers))
    for name in order:
        d = fs_data[name]
        if not d["figures"]:
            lines.append(f"| {name} | " + " | ".join(["–"] * len(headers)) + f" |")
            continue
        cells = [fmt(d["figures"].get(k), kind) for k, _, _, kind in METRICS]
        label = name if d["status"] == "ok" else f"{name} ({d['status']})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def ratio_cell(v):
        return "–" if v is None else f"{v:.2f}×"

    if subj and peers:
        lines.append(f"| **{subject} ÷ best encrypted peer** | "
                     + " | ".join(ratio_cell(ratios.get(k)) for k, _, _, _ in METRICS) + " |")
    if subj and peers and rounds > 1:
        # The same ratio within each round alone: does the verdict hold in every round?
        for r in range(rounds):
            def round_value(name, key):
                try:
                    return float(fs_data[name]["raw"][r][key])
                except (KeyError, ValueError, IndexError):
                    return None
            cells = []
            for key, _, better, _ in METRICS:
                if key == "tail_ratio":
                    cells.append("–")
                    continue
                best = best_of([round_value(p, key) for p in peers], better)
                cells.append(ratio_cell(ratio_for(round_value(subject, key), best, better)))
            lines.append(f"| {subject} ÷ best peer, round {r + 1} alone | " + " | ".join(cells) + " |")
    if subj and reference:
        lines.append(f"| **{subject} as % of {reference}** | "
                     + " | ".join("–" if of_ref.get(k) is None else f"{100 * of_ref[k]:.0f}%"
                                  for k, _, _, _ in METRICS) + " |")
    lines.append("")
    skipped = [f"{n} ({fs_data[n]['status']})" for n in order if fs_data[n]["status"] != "ok"]
    if skipped:
        lines.append("**Not (fully) measured:** " + ", ".join(skipped) + ". See bench/results/run.log.")
        lines.append("")
    def in_any_round(name, key):
        return next((raw[key] for raw in fs_data[name]["raw"] if key in raw), None)

    probe_bugs = [n for n in order if in_any_round(n, "probe_syncfs") == "failed"]
    if probe_bugs:
        lines.append("**Bug seen:** " + ", ".join(probe_bugs) + ": syncfs failed after one file was written, "
                     "fsynced and unlinked (a deferred write-back of the unlinked file failed). See run.log.")
        lines.append("")
    untar_bugs = [n for n in order if in_any_round(n, "untar_syncfs") == "failed"]
    if untar_bugs:
        lines.append("**Bug seen:** " + ", ".join(untar_bugs) + ": the syncfs after the untar reported an error "
                     "(its time is still counted; the content check passed unless the row says 'failed').")
        lines.append("")
    meta_diffs = [f"{n} {in_any_round(n, 'tree_compare_metadata_diffs')}" for n in order
                  if in_any_round(n, "tree_compare_metadata_diffs")]
    if meta_diffs:
        lines.append("Metadata-only differences found by `tar --compare` after the untar (e.g. mtimes not kept): "
                     + ", ".join(meta_diffs) + " entries.")
        lines.append("")
    if not subj:
        lines.append(f"**{subject} was not measured: no ratios.**")
        lines.append("")
    elif not peers:
        lines.append("**No encrypted peer was measured: no ratio to the best peer.**")
        lines.append("")

    if rounds > 1:
        lines.append(f"Each figure is the best of {rounds} rounds (every filesystem measured once per round, the "
                     "order reversed in even rounds, so a machine that speeds up or slows down during the run favours "
                     "none); peak RSS is the highest of the rounds.")
        lines.append("")
    lines.append(f"Ratios: **>1 means {subject} is better**. Seconds and RSS: best peer ÷ {subject}; "
                 f"rates: {subject} ÷ best peer. Best encrypted peer per column among: {', '.join(peers) or 'none'}."
                 + (f" Plain reference: {reference}." if reference else ""))
    lines.append("")

    # Targets of issue 6.
    targets = []
    if subj and peers:
        def t(label, ok, detail):
            targets.append({"target": label, "met": ok, "detail": detail})

        cols = [k for k in PEER_TARGET_KEYS if ratios.get(k) is not None]
        behind = [k for k in cols if ratios[k] < 1.0]
        missing = [k for k in PEER_TARGET_KEYS if ratios.get(k) is None]
        t("≥ 1.0× the best encrypted peer on every column of issue 6's table"
          + (f" (not measured: {', '.join(missing)})" if missing else ""), not behind and not missing,
          "behind on: " + ", ".join(f"{k} {ratios[k]:.3f}×" for k in behind) if behind else "all columns ≥ 1.0×")
        for k in ("write_MBps", "untar_s"):
            if ratios.get(k) is not None:
                t(f"≥ 1.5× the best peer on {k}", ratios[k] >= 1.5, f"{ratios[k]:.2f}×")
        if reference:
            for k in ("write_MBps", "read_MBps"):
                if of_ref.get(k) is not None:
                    t(f"≥ 70% of {reference} on {k}", of_ref[k] >= 0.7, f"{100 * of_ref[k]:.0f}%")
        if subj.get("rss_mib") is not None:
            t(f"peak RSS < {RSS_LIMIT_MIB} MiB", subj["rss_mib"] < RSS_LIMIT_MIB, f"{subj['rss_mib']:.1f} MiB")
        if subj.get("tail_ratio") is not None:
            t(f"4k write at end of {labels['stream']} ≈ of {labels['small']} (ops/s ratio ≥ 0.8)",
              subj["tail_ratio"] >= 0.8, f"{subj['tail_ratio']:.2f}")
        lines.append(f"Targets (issue 6) for {subject}:")
        lines.append("")
        for x in targets:
            lines.append(f"- {'✅' if x['met'] else '❌'} {x['target']}: {x['detail']}")
        lines.append("")

    lines.append(f"Bench time: {float(meta.get('bench_seconds', 0)):.0f} s of workloads, "
                 f"{float(meta.get('total_seconds', 0)):.0f} s in all.")
    md = "\n".join(lines) + "\n"

    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "latest.md"), "w") as f:
        f.write(md)
    doc = {
        "meta": meta,
        "metrics": [{"key": k, "header": h.format(**labels), "better": b} for k, h, b, _ in METRICS],
        "filesystems": {n: fs_data[n] for n in order},
        "subject": subject,
        "encrypted_peers": peers,
        "best_peer": best_peer,
        "ratio_to_best_peer": ratios,
        "reference": reference,
        "fraction_of_reference": of_ref,
        "targets": targets,
    }
    with open(os.path.join(results, "latest.json"), "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    sys.stdout.write(md)
    chart(results, subject, peers, reference, ratios, of_ref, labels, meta, subj)


def chart(results, subject, peers, reference, ratios, of_ref, labels, meta, subject_figures):
    path = os.path.join(results, "ratios.png")
    keys = [k for k, _, _, _ in METRICS if ratios.get(k) is not None]
    if not keys:
        if os.path.exists(path):
            os.remove(path)
        print(f"(no chart: no ratio for {subject})")
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("WARNING: matplotlib not importable: ratios.png not drawn", file=sys.stderr)
        return
    short = {k: h.format(**labels).replace(" (verified)", "").replace(", ops/s", "") for k, h, _, _ in METRICS}
    ref_keys = [k for k in keys if of_ref.get(k) is not None]
    ncols = 2 if ref_keys else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 5.5), squeeze=False)

    ax = axes[0][0]
    vals = [ratios[k] for k in keys]
    need = [1.5 if k in ("write_MBps", "untar_s") else 1.0 for k in keys]

    def colour(k, v, n):
        if k == "rss_mib":  # its target is absolute
            rss = subject_figures.get("rss_mib")
            return "#2e7d32" if rss is not None and rss < RSS_LIMIT_MIB else "#c62828"
        if k not in PEER_TARGET_KEYS:
            return "#90a4ae"  # for information
        return "#2e7d32" if v >= n else "#c62828"
    colors = [colour(k, v, n) for k, v, n in zip(keys, vals, need)]
    bars = ax.bar(range(len(keys)), vals, color=colors)
    ax.axhline(1.0, color="black", linewidth=1)
    for i, n in enumerate(need):
        if n > 1.0:
            ax.plot([i - 0.4, i + 0.4], [n, n], color="black", linestyle="--", linewidth=1)
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}×", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([short[k] for k in keys], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(f"{subject} vs best encrypted peer (>1 = better)")
    ax.set_title(f"{subject} ÷ best of {', '.join(peers)}\n(dashed: 1.5× target; grey: no target; "
                 f"RSS coloured by < {RSS_LIMIT_MIB} MiB)", fontsize=10)

    if ref_keys:
        ax = axes[0][1]
        vals = [100 * of_ref[k] for k in ref_keys]
        colors = ["#2e7d32" if (v >= 70 or k not in PASSTHROUGH_TARGET_KEYS) else "#c62828"
                  for k, v in zip(ref_keys, vals)]
        colors = [c if k in PASSTHROUGH_TARGET_KEYS else "#90a4ae" for k, c in zip(ref_keys, colors)]
        bars = ax.bar(range(len(ref_keys)), vals, color=colors)
        ax.axhline(100, color="black", linewidth=1)
        ax.axhline(70, color="black", linestyle="--", linewidth=1)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.0f}%", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(ref_keys)))
        ax.set_xticklabels([short[k] for k in ref_keys], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(f"{subject} as % of {reference}")
        ax.set_title(f"{subject} vs plain {reference}\n(dashed: 70% target, coloured columns have it)", fontsize=10)

    fig.suptitle(f"vikingfs bench, {meta.get('mode')} mode, {meta.get('date')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
