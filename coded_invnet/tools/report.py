"""What `make eval` writes from its records: the RESULTS.md tables, the plot, the manifests' metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coded_invnet.coding import SHIPPED_KS

TABLE_BEGIN, TABLE_END = "<!-- accuracy-table:begin -->", "<!-- accuracy-table:end -->"
OVERHEAD_BEGIN, OVERHEAD_END = "<!-- overhead-table:begin -->", "<!-- overhead-table:end -->"
PARITY_BEGIN, PARITY_END = "<!-- parity-table:begin -->", "<!-- parity-table:end -->"


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in records})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for method, style in (("coded-invnet", "o-"), ("parm", "s--"), ("coded-invnet-pixel-mean", "^:")):
            rows = sorted(
                (r for r in records if r["dataset"] == ds and r["method"] == method and r["r"] == 1),
                key=lambda r: r["k"],
            )
            if rows:
                ax.plot([r["k"] for r in rows], [r["degraded_accuracy"] for r in rows], style, label=method)
        normal = next(
            (r["normal_accuracy"] for r in records if r["dataset"] == ds and r["method"] == "none"), None
        )
        if normal is not None:
            ax.axhline(normal, color="grey", lw=0.8, ls=":", label="base model (no fault)")
        ax.set(title=ds, xlabel="k (data workers per parity)", ylabel="degraded accuracy")
        ax.set_xticks(list(SHIPPED_KS))
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_table(records: list[dict[str, Any]]) -> str:
    """The one-parity records (r = 1); parity_table has those with r parities."""
    lines = [
        "| data set | k | method | normal | true-label accuracy | agreement with the base model | queries |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r.get("r", 1) == 1):  # records written before r parities have no r
        lines.append(
            f"| {r['dataset']} | {r['k']} | {r['method']} | {r['normal_accuracy']:.4f} | "
            f"{r['degraded_accuracy']:.4f} | {r['recovery_accuracy']:.4f} | {r['n_queries']} |"
        )
    return "\n".join(lines)


def overhead_table(overheads: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | k | worker MACs/query | F_k MACs/group | F_k in worker queries | extra compute (MACs) "
        "| worker µs/query | F_k µs/group | extra compute (measured) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in overheads:
        for p in o["per_k"]:
            cells = [
                o["dataset"],
                p["k"],
                f"{o['worker_macs_per_query']:,}",
                f"{p['encoder_macs_per_group']:,}",
                f"{p['encoder_in_worker_queries']:.2f}",
                f"{p['extra_compute_macs']:.1%}",
                o["worker_us_per_query"],
                p["encoder_us_per_group"],
                f"{p['extra_compute_measured']:.1%}",
            ]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def parity_table(records: list[dict[str, Any]], overheads: list[dict[str, Any]]) -> str:
    """coded-invnet with r parity workers and ``missing`` members missing at once, beside its cost."""
    codes = {(o["dataset"], c["k"], c["r"]): c for o in overheads for c in o["per_code"]}
    rows = [
        r
        for r in records
        if r["method"] == "coded-invnet" and (r["r"] > 1 or (r["dataset"], r["k"], 2) in codes)
    ]
    lines = [
        "| data set | k | r | missing | true-label accuracy | agreement with the base model | decoded "
        "| F MACs/group | F in worker queries | extra compute (MACs) | extra compute (measured) "
        "| worst condition number | worst error gain: any parities / those decoded from |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["dataset"] != "mnist", -r["k"], r["r"], r["missing"])):
        c = codes.get((r["dataset"], r["k"], r["r"]))
        used = c.get("worst_error_gain_decoded", {}).get(str(r["missing"])) if c else None
        decoded_gain = "—" if used is None else f"{used:.1f}"
        cost = (
            ["—"] * 6
            if c is None
            else [
                f"{c['encoder_macs_per_group']:,}",
                f"{c['encoder_in_worker_queries']:.2f}",
                f"{c['extra_compute_macs']:.1%}",
                f"{c['extra_compute_measured']:.1%}",
                f"{c['worst_condition_number']:.1f}",
                f"{c['worst_error_gain']:.1f} / {decoded_gain}",
            ]
        )
        cells = [r["dataset"], r["k"], r["r"], r["missing"], f"{r['degraded_accuracy']:.4f}"]
        cells += [f"{r['recovery_accuracy']:.4f}", r["n_queries"], *cost]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def replace_block(path: Path, begin: str, end: str, body: str, command: str) -> None:
    """Rewrite the text between the markers in ``path`` (the doc quotes exactly what the command produced)."""
    text = path.read_text() if path.is_file() else ""
    block = f"{begin}\nProduced by `{command}`:\n\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def record_metrics(manifest_path: Path, records: list[dict[str, Any]], command: str) -> None:
    """Put the evaluation figures into the data set's model manifest (made by `make export`)."""
    if not manifest_path.is_file():
        return
    manifest = json.loads(manifest_path.read_text())
    manifest["metrics"] = {"command": command, "records": records}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
