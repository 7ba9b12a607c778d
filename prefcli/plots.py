"""Every figure prefcli draws (matplotlib, Agg backend). The stages compute what a figure shows;
the functions here only draw it."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stages.length_bias import PlotData


def length_bias_figure(data: PlotData):
    """A matplotlib Figure: per fitted score, score vs length with the fit and the debiased cloud;
    last panel, P(chosen longer) per length-ratio bucket. The caller saves it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * (len(data.panels) + 1), 4.2), layout="constrained")
    axes = fig.subplots(1, len(data.panels) + 1, squeeze=False)[0]
    for ax, panel in zip(axes, data.panels):
        ax.set_xlabel(panel.xlabel)
        ax.scatter(panel.x, panel.y, s=4, alpha=0.25, color="tab:blue", label="score")
        if panel.debiased is not None:
            ax.scatter(panel.x, panel.debiased, s=4, alpha=0.25, color="tab:orange", label="debiased")
        if panel.fit is not None:
            grid, curve, label = panel.fit
            ax.plot(grid, curve, color="black", lw=2, label=label)
        ax.set_ylabel(panel.score)
        ax.set_title(panel.title, fontsize=10)
        ax.legend(loc="best", markerscale=3, fontsize=8)
    ax = axes[-1]
    ax.bar(data.bucket_labels, data.p_chosen_longer, color="tab:green")
    ax.axhline(0.5, color="black", ls="--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("P(chosen longer)")
    ax.set_xlabel("length ratio bucket")
    ax.set_title("label length bias")
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def coverage_plot(doc: dict[str, Any]) -> bytes:
    """PNG: coverage vs agreement of kept labels, and human agreement per μ̂ bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    points = [(r["keep_coverage"], r["keep_agreement"]) for r in doc["coverage"] if r["keep_agreement"] is not None]
    left.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    left.axhline(doc["target"], color="grey", linestyle="--", label=f"target {doc['target']:.2f}")
    if doc["kept_agreement"] is not None:
        left.scatter([doc["kept_coverage"]], [doc["kept_agreement"]], color="red", zorder=3,
                     label=f"ambiguous < {doc['thresholds']['ambiguous']:.3g}")
    left.set_xlabel("coverage (share of pairs kept)")
    left.set_ylabel("agreement of kept labels with humans")
    left.legend(loc="lower left")
    bins = doc["bins"]
    labels = [f"<{b['hi']:.2g}" if b["lo"] is None else f"≥{b['lo']:.2g}" for b in bins]
    right.bar(range(len(bins)), [b["agreement"] or 0 for b in bins], label="reviewed pairs")
    right.plot(range(len(bins)), [b["model_agreement"] or 0 for b in bins], color="black", marker=".",
               label="model, all pairs")
    right.legend(loc="lower right")
    right.set_xticks(range(len(bins)), labels, rotation=45, fontsize=7)
    right.set_xlabel("pref_mean bin")
    right.set_ylabel("share of reviewed pairs humans kept")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
