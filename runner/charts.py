"""The report's charts, drawn with matplotlib as inline SVG: factor bars, dev curves, search trials, merges."""

from __future__ import annotations

import io
from typing import Any


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, with labels as plain text (users' "$5", never TeX)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    matplotlib.rcParams["svg.fonttype"] = "none"  # labels stay text: the browser draws them, a reader can find them
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


def factor_charts(factors: dict[str, list[tuple]], base_model: float | None, main: str) -> list:
    """One chart per factor: the tuned main metric by value, each with its 95% interval (the reference highlighted).

    Points, not bars: the axis is zoomed to the values and intervals, which a bar starting below zero would
    misstate. Each point is (label, value, is reference, interval low, interval high).
    """
    plt = _pyplot()

    charts = []
    for factor, points in factors.items():
        fig, ax = plt.subplots(figsize=(4.2, 2.8))
        for i, (_, value, is_ref, low, high) in enumerate(points):
            colour = "#1f6feb" if is_ref else "#57606a"
            ax.errorbar(
                [i], [value], yerr=[[value - low], [high - value]], fmt="o", color=colour, capsize=4, markersize=6
            )
            ax.annotate(f"{value:.3f}", (i, value), xytext=(7, -3), textcoords="offset points", fontsize=8)
        spots = [v for p in points for v in (p[1], p[3], p[4])]
        if base_model is not None:
            ax.axhline(base_model, color="#cf222e", linestyle="--", linewidth=1, label=f"base model {base_model:.3f}")
            ax.legend(fontsize=7, loc="best")
            spots.append(base_model)
        pad = max(0.01, 0.15 * (max(spots) - min(spots)))
        ax.set_ylim(max(0.0, min(spots) - pad), min(1.0, max(spots) + pad))
        ax.set_xlim(-0.5, len(points) - 0.5)
        ax.set_xticks(range(len(points)), [p[0] for p in points], fontsize=8)
        ax.set_ylabel(f"test {main}", fontsize=8)
        ax.set_title(factor, fontsize=9)
        charts.append({"title": factor, "svg": _svg(fig)})
    return charts


def curve_chart(variants: list, dev_metric: str) -> str | None:
    """Training loss and dev metric per epoch for each variant, the epoch each kept marked.

    Overfitting shows as loss down, dev flat. With fewer than two logged losses there is no curve to draw, and
    the chart says so instead of showing an empty frame.
    """
    plt = _pyplot()

    if not any(v.curves.get("loss") or v.curves.get("dev") for v in variants):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    short = []
    for v in variants:
        loss = v.curves.get("loss") or []
        if len(loss) >= 2:
            xs, ys = zip(*loss)
            left.plot(xs, ys, label=v.label, linewidth=1)
        else:
            short.append(f"{v.label}: {len(loss)} loss point(s)")
        if v.curves.get("dev"):
            xs, ys = zip(*v.curves["dev"])
            (line,) = right.plot(xs, ys, marker="o", markersize=3, label=v.label, linewidth=1)
            chosen = dict(v.curves["dev"]).get(v.best_epoch) if v.best_epoch is not None else None
            if chosen is not None:
                right.scatter([v.best_epoch], [chosen], marker="*", s=160, color=line.get_color(), zorder=4)
    if short:
        left.text(
            0.5,
            0.5,
            "too little training to draw a curve\n" + "\n".join(short[:4]),
            ha="center",
            va="center",
            transform=left.transAxes,
            fontsize=8,
        )
    left.set_title("training loss", fontsize=9)
    left.set_xlabel("epoch", fontsize=8)
    right.set_title(f"dev {dev_metric} (epoch 0 = base model; \u2605 = epoch kept)", fontsize=9)
    right.set_xlabel("epoch", fontsize=8)
    right.xaxis.get_major_locator().set_params(integer=True)
    if right.lines:
        right.legend(fontsize=7)
    else:
        if left.lines:
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
