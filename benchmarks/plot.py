"""The report's figure (``speedup.png``): tbn-tvm's host speed-ups per model and batch (ratios of
median seconds per call, log scale) and its Cortex-M4 instruction ratios.  A speed-up resting on
a timing that fails the trust rule gets no bar, only the label ``n.m.`` (not measured enough)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.report import _ratio, _trusted
from benchmarks.suite import ORT, TBN, TVM_FP32, VARIANT_TITLES


def plot(report: dict, path: Path) -> None:
    """Bar charts: host speed-ups per model/batch (log scale) and Cortex-M instruction ratios;
    written as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {m["key"]: m["short"] for m in report["models"]}
    host = report["host"]
    mcu = [
        r
        for r in report["cortex_m"]
        if "fewer_instructions_than_dense" in r or "fewer_instructions_than_authors" in r
    ]
    panels = (1 if host else 0) + (1 if mcu else 0)
    if panels == 0:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to plot: no host timings and no Cortex-M ratios", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    both = panels == 2
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(13 if both else 9 if host else 5, 4.8),
        gridspec_kw={"width_ratios": [3, 1]} if both else None,
        squeeze=False,
    )
    if host:
        ax = axes[0][0]
        labels = [f"{titles[r['model']]}\nbatch {r['batch']}" for r in host]
        series = [
            (f"vs {VARIANT_TITLES[ORT]}", ORT),
            (f"vs {VARIANT_TITLES[TVM_FP32]}", TVM_FP32),
        ]
        width = 0.8 / len(series)
        xs = np.arange(len(host))
        untrusted = False
        for i, (name, other) in enumerate(series):
            vals, texts = [], []
            for r in host:
                v = r["speedup"].get(f"vs_{other}")
                ok = _trusted(r["variants"].get(TBN)) and _trusted(r["variants"].get(other))
                if v is None:
                    vals.append(np.nan)
                    texts.append("")
                elif not ok:
                    vals.append(np.nan)
                    texts.append("n.m.")
                    untrusted = True
                else:
                    vals.append(v)
                    texts.append(_ratio(v))
            pos = xs + (i - (len(series) - 1) / 2) * width
            bars = ax.bar(pos, vals, width, label=name)
            ax.bar_label(bars, labels=[t if t != "n.m." else "" for t in texts], fontsize=7, padding=1)
            for x, t in zip(pos, texts):
                if t == "n.m.":
                    ax.text(x, 1.0, "n.m.", ha="center", va="bottom", fontsize=7, rotation=90, color="gray")
        ax.set_yscale("log")
        ax.set_xlim(-0.5, len(host) - 0.5)
        if not any(
            np.isfinite(r["speedup"].get(f"vs_{o}", np.nan))
            and _trusted(r["variants"].get(o))
            and _trusted(r["variants"].get(TBN))
            for r in host
            for _, o in series
        ):
            ax.set_ylim(0.5, 2.0)  # nothing to draw: keep the 1x line and the labels in view
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_ylabel("tbn-tvm speed-up (median time ratio, log)")
        ax.set_title(f"Host CPU ({report['machine'].get('usable_cpus')} cores): tbn-tvm speed-up")
        ax.legend(fontsize=8)
        if untrusted:
            ax.text(
                0.0,
                -0.2,
                "n.m.: not measured enough (fails the trust rule; see the report)",
                transform=ax.transAxes,
                fontsize=7,
            )
    if mcu:
        ax2 = axes[0][1 if host else 0]
        names, vals = [], []
        for r in mcu:
            if "fewer_instructions_than_dense" in r:
                names.append(f"{titles[r['model']]}\nvs dense")
                vals.append(r["fewer_instructions_than_dense"])
            if "fewer_instructions_than_authors" in r:
                names.append(f"{titles[r['model']]}\nvs authors'*")
                vals.append(r["fewer_instructions_than_authors"])
        bars = ax2.bar(np.arange(len(vals)), vals, 0.6, color="tab:green")
        ax2.bar_label(bars, labels=[_ratio(v) for v in vals], fontsize=7, padding=1)
        ax2.set_xticks(np.arange(len(vals)), names, fontsize=8)
        ax2.set_title("Cortex-M4 (QEMU): fewer instructions")
        ax2.set_ylabel("instructions ratio")
        if any("fewer_instructions_than_authors" in r for r in mcu):
            ax2.text(
                0.0,
                -0.22,
                "* authors' 2.645 M from issue 4 (not measured here)",
                transform=ax2.transAxes,
                fontsize=7,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
