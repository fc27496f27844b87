"""The report's charts, drawn with matplotlib as inline SVG: factor bars, dev curves, search trials, merges."""

from __future__ import annotations

import io
from typing import Any


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, with labels as plain text (users' "$5", never TeX)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    """The figure as inline SVG (the page needs no network), closed after."""
    plt = _pyplot()

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def factor_charts(factors: dict[str, list[tuple[str, float, bool]]], base_model: float | None, main: str) -> list:
    """One bar chart per factor: tuned main metric by value (the reference value highlighted)."""
    plt = _pyplot()

    charts = []
    for factor, points in factors.items():
        fig, ax = plt.subplots(figsize=(4.2, 2.8))
        labels = [p[0] for p in points]
        values = [p[1] for p in points]
        colours = ["#1f6feb" if p[2] else "#8c959f" for p in points]
        ax.bar(range(len(points)), values, color=colours)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        if base_model is not None:
            ax.axhline(base_model, color="#cf222e", linestyle="--", linewidth=1, label="base model")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(points)), labels, fontsize=8)
        ax.set_ylabel(f"test {main}", fontsize=8)
        low = min([*values, base_model or values[0]])
        ax.set_ylim(max(0.0, low - 0.1), min(1.0, max(values) + 0.05))
        ax.set_title(factor, fontsize=9)
        charts.append({"title": factor, "svg": _svg(fig)})
    return charts


def curve_chart(variants: list, dev_metric: str) -> str | None:
    """Training loss and dev metric per epoch for each variant (overfitting shows as loss down, dev flat)."""
    plt = _pyplot()

    if not any(v.curves.get("loss") for v in variants):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for v in variants:
        if v.curves.get("loss"):
            xs, ys = zip(*v.curves["loss"])
            left.plot(xs, ys, label=v.label, linewidth=1)
        if v.curves.get("dev"):
            xs, ys = zip(*v.curves["dev"])
            right.plot(xs, ys, marker="o", label=v.label, linewidth=1)
    left.set_title("training loss", fontsize=9)
    left.set_xlabel("epoch", fontsize=8)
    right.set_title(f"dev {dev_metric} (epoch 0 = base model)", fontsize=9)
    right.set_xlabel("epoch", fontsize=8)
    if right.lines:
        right.legend(fontsize=7)
    else:
        left.legend(fontsize=7)
        right.text(0.5, 0.5, "no dev split", ha="center", va="center", transform=right.transAxes, fontsize=8)
    return _svg(fig)


def search_charts(study: dict[str, Any]) -> dict[str, str | None]:
    """Objective by trial (pruned trials marked), best-so-far curve, and Optuna's parameter importances."""
    plt = _pyplot()

    trials = study["trials"]
    maximize = study["direction"] == "maximize"
    fig, ax = plt.subplots(figsize=(5.5, 3))
    done = [(t["trial"], t["dev_objective"]) for t in trials if t["status"] == "ok" and t["dev_objective"] is not None]
    pruned = [(t["trial"], t["curve"][-1][1]) for t in trials if t["status"] == "pruned" and t["curve"]]
    if done:
        ax.scatter(*zip(*done), color="#1f6feb", label="completed", zorder=3)
        best, xs, ys = None, [], []
        for number, value in sorted(done):
            best = value if best is None else (max(best, value) if maximize else min(best, value))
            xs.append(number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="#1a7f37", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), color="#8c959f", marker="x", label="pruned (last dev value)", zorder=3)
    ax.set_xlabel("trial", fontsize=8)
    ax.set_ylabel(f"dev {study['objective']}", fontsize=8)
    ax.legend(fontsize=7)
    out: dict[str, str | None] = {"trials": _svg(fig), "importances": None}
    if study["importances"]:
        fig, ax = plt.subplots(figsize=(4.5, 0.5 + 0.4 * len(study["importances"])))
        names = list(study["importances"])
        ax.barh(names, [study["importances"][n] for n in names], color="#1f6feb")
        ax.invert_yaxis()
        ax.set_xlabel("importance (Optuna, fANOVA)", fontsize=8)
        out["importances"] = _svg(fig)
    return out


def merge_chart(merge: dict[str, Any], main: str) -> str:
    """Dev main metric against the largest guard drop, one point per alpha (the chosen one filled)."""
    plt = _pyplot()

    rows = merge["alphas"]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    drops = [100 * max(r["drop"].values(), default=0.0) for r in rows]
    devs = [r["dev"] for r in rows]
    ax.plot(drops, devs, color="#8c959f", zorder=1)
    for row, x, y in zip(rows, drops, devs):
        chosen = row["alpha"] == merge["chosen_alpha"]
        ax.scatter([x], [y], color="#1a7f37" if row["ok"] else "#cf222e", s=60 if chosen else 25, zorder=3)
        ax.annotate(
            f"α {row['alpha']}" + (" (kept)" if chosen else ""),
            (x, y),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xlabel("largest guard drop vs the base model (%)", fontsize=8)
    ax.set_ylabel(f"dev {main}", fontsize=8)
    return _svg(fig)
