"""The `pipeline` experiment's headline (pure, from the stage results) and its report: `report.md` (figures
as PNG files beside it) and a self-contained `report.html` (the same figures as base64 PNGs).

Nothing here measures: every number is one the pipeline's stages recorded.
"""

from __future__ import annotations

import base64
import html
import io
import os

from leanjax.audit.serving import devices_that_fit

_MIB = 2**20
FIGURES = ("curves", "compute", "frontier")
LEAN_STAGES = ("tokens", "tune", "lean", "cache")  # + student_L<d>
GOALS = {"lean.accuracy": ">= target_accuracy", "train_compute_ratio": "<= 0.25", "train_cost_ratio": "<= 0.25",
         "train_compute_ratio_oracle": "<= 1.0", "train_memory_ratio": "<= 0.10",
         "serving.accuracy": ">= target_accuracy", "serving_size_ratio": "<= 0.05", "serving_cost_ratio": "<= 0.25"}


def oracle(grid: dict) -> dict:
    """The grid's cheapest run to the target (fewest steps, then best accuracy); none reached: the best."""
    reached = [r for r in grid.values() if r["steps_to_target"] is not None]
    if reached:
        return min(reached, key=lambda r: (r["steps_to_target"], -r["accuracy"]))
    return max(grid.values(), key=lambda r: r["accuracy"])


def _lean_names(stages: dict) -> list[str]:
    return [*LEAN_STAGES, *sorted(k for k in stages if k.startswith("student_L"))]


def _flops(name: str, s: dict) -> float:
    return s.get("train_flops", 0.0) + s.get("eval_flops", 0.0) + s.get("cache_flops", 0.0)


def served_choice(arms: dict, target: float, tolerance: float = 0.10) -> str:
    """The cheapest served model ($/1k requests) that reaches `target`, the smallest of those within `tolerance`
    of the cheapest (on the shared cores, equal programs timed alternately differ by up to ~10%); none
    reaches it: the most accurate."""
    ok = [n for n, a in arms.items() if a["accuracy"] >= target]
    if not ok:
        return max(arms, key=lambda n: arms[n]["accuracy"])
    cheapest = min(arms[n]["usd_per_1k_requests"] for n in ok)
    near = [n for n in ok if arms[n]["usd_per_1k_requests"] <= cheapest * (1 + tolerance)]
    return min(near, key=lambda n: (arms[n]["weight_bytes"], arms[n]["usd_per_1k_requests"]))


def headline_of(stages: dict, target: float, usd_per_hour: float) -> tuple[dict, dict]:
    """`(headline, breakdown)` from the stage results (wall seconds priced at `usd_per_hour`)."""
    def usd(s):
        return s["wall_s"] * usd_per_hour / 3600
    grid = {k: v for k, v in stages.items() if k.startswith("brute_")}
    best = oracle(grid)
    lean_names = _lean_names(stages)
    lean_flops = {k: _flops(k, stages[k]) for k in lean_names}
    lean_usd = {k: usd(stages[k]) for k in lean_names}
    lean_peak = {k: stages[k]["peak_bytes"] for k in lean_names if "peak_bytes" in stages[k]}
    brute_peak = max(r["peak_bytes"] for r in grid.values())
    arms = stages["serve"]["arms"]
    chosen = served_choice(arms, target)
    lean = stages["lean"]
    headline = {
        "target_accuracy": target,
        "brute.accuracy": best["accuracy"], "brute.steps_to_target": best["steps_to_target"],
        "brute.grid_runs": len(grid),
        "lean.accuracy": lean["accuracy"], "lean.steps_to_target": lean["steps_to_target"],
        "serving.accuracy": arms[chosen]["accuracy"],
        "train_compute_ratio": sum(lean_flops.values()) / sum(r["train_flops"] for r in grid.values()),
        "train_compute_ratio_oracle": sum(lean_flops.values()) / best["train_flops"],
        "train_cost_ratio": sum(lean_usd.values()) / sum(usd(r) for r in grid.values()),
        "train_cost_ratio_oracle": sum(lean_usd.values()) / usd(best),
        "train_memory_ratio": max(lean_peak.values()) / brute_peak,
        "serving_size_ratio": arms[chosen]["weight_bytes"] / arms["brute_f32"]["weight_bytes"],
        "serving_cost_ratio": arms[chosen]["usd_per_1k_requests"] / arms["brute_f32"]["usd_per_1k_requests"],
    }
    breakdown = {"served": chosen, "oracle_learning_rate": best["learning_rate"], "lean_flops": lean_flops,
                 "lean_usd": lean_usd, "lean_peak_bytes": lean_peak,
                 "brute_flops": {k: r["train_flops"] for k, r in grid.items()},
                 "brute_usd": {k: usd(r) for k, r in grid.items()},
                 "fits": {"brute": devices_that_fit(brute_peak), "lean": devices_that_fit(max(lean_peak.values()))},
                 "peak_bytes": {"brute": brute_peak, "lean": max(lean_peak.values())}}
    return headline, breakdown


def _verdict(key: str, value, headline: dict) -> str:
    if key not in GOALS or value is None:
        return ""
    t = headline["target_accuracy"]
    ok = {"lean.accuracy": lambda v: headline["lean.steps_to_target"] is not None,
          "serving.accuracy": lambda v: v >= t, "train_compute_ratio_oracle": lambda v: v <= 1.0,
          "train_memory_ratio": lambda v: v <= 0.10, "serving_size_ratio": lambda v: v <= 0.05}.get(
        key, lambda v: v <= 0.25)(value)
    return f"{GOALS[key]}: {'met' if ok else 'missed'}"


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _figures(stages: dict, headline: dict, breakdown: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}

    def save(fig, name):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        out[name] = buf.getvalue()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, s in stages.items():
        if s.get("eval_curve"):
            x, y = zip(*s["eval_curve"])
            ax.plot(x, y, marker="o", label=f"{k} ({s['learning_rate']:.1e})" if k.startswith("brute") else k)
    ax.axhline(headline["target_accuracy"], color="k", ls="--", lw=1, label="target")
    ax.set(xlabel="step", ylabel="test accuracy", title="Steps to target")
    ax.legend(fontsize=7)
    save(fig, "curves")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    parts = [("brute grid", breakdown["brute_flops"]), ("lean", breakdown["lean_flops"])]
    for i, (label, flops) in enumerate(parts):
        left = 0.0
        for k, v in flops.items():
            ax.barh(i, v / 1e12, left=left, label=k)
            left += v / 1e12
    ax.set_yticks([0, 1], [p[0] for p in parts])
    ax.set(xlabel="TFLOP to the target (all-in)", title="Training compute")
    ax.legend(fontsize=6, ncol=3)
    save(fig, "compute")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    arms = stages["serve"]["arms"]
    for n, a in arms.items():
        ax.scatter(a["usd_per_1k_requests"], a["accuracy"], s=30)
        ax.annotate(n, (a["usd_per_1k_requests"], a["accuracy"]), fontsize=7)
    ax.axhline(headline["target_accuracy"], color="k", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="$ per 1k requests (log)", ylabel="test accuracy (served program)", title="Serving frontier")
    save(fig, "frontier")
    return out


def _tables(stages: dict, headline: dict, breakdown: dict) -> list[tuple[str, list[list[str]]]]:
    rows = [["key", "measured", "goal"]] + [[f"`{k}`", _fmt(v), _verdict(k, v, headline)] for k, v in headline.items()]
    grid = [["run", "rate", "accuracy", "steps run", "steps to target", "TFLOP", "wall s"]]
    for k, s in stages.items():
        if k.startswith("brute_"):
            grid.append([k, f"{s['learning_rate']:.0e}", _fmt(s["accuracy"]), str(s["steps"]),
                         _fmt(s["steps_to_target"]), f"{s['train_flops'] / 1e12:.3g}", f"{s['wall_s']:.0f}"])
    lean = [["stage", "TFLOP", "wall s", "train-step peak MiB", "notes"]]
    for k in _lean_names(stages):
        s = stages[k]
        note = {"tune": f"best rate {s.get('best_learning_rate', 0):.2e}, {len(s.get('trials', []))} trials",
                "lean": f"accuracy {_fmt(s.get('accuracy'))}, remat {s.get('remat')}, steps {s.get('steps')}",
                "cache": f"{s.get('examples')} examples"}.get(k, f"{s.get('num_new', '')}" if k == "tokens" else "")
        note = s.get("skipped", note)
        peak = f"{s['peak_bytes'] / _MIB:.1f}" if "peak_bytes" in s else "-"
        lean.append([k, f"{breakdown['lean_flops'][k] / 1e12:.3g}", f"{s['wall_s']:.0f}", peak, note])
    serve = [["served model", "accuracy", "MiB", "s per batch", "$ per 1k requests", "reaches target"]]
    for n, a in stages["serve"]["arms"].items():
        serve.append([n + (" (chosen)" if n == breakdown["served"] else ""), _fmt(a["accuracy"]),
                      f"{a['weight_bytes'] / _MIB:.2f}", f"{a['batch_time_s']:.4f}", f"{a['usd_per_1k_requests']:.3e}",
                      "yes" if a["accuracy"] >= headline["target_accuracy"] else "no"])
    fits = [["pipeline", "largest train step", "fits (smallest memory first)"]] + [
        [k, f"{breakdown['peak_bytes'][k] / _MIB:.1f} MiB", ", ".join(v)] for k, v in breakdown["fits"].items()]
    return [("Headline", rows), ("Brute-force grid", grid), ("Lean stages", lean), ("Serving at the target", serve),
            ("Devices that fit the largest train step", fits)]


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def _html_table(rows: list[list[str]]) -> str:
    def cell(text, tag):
        return f"<{tag}>{html.escape(text).replace('`', '')}</{tag}>"
    head = "".join(cell(c, "th") for c in rows[0])
    body = "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write(workdir: str, stages: dict, headline: dict, breakdown: dict, title: str = "leanjax: cost to target"):
    """Write `report.md`, `report_figures/*.png` and `report.html` into `workdir`; returns their paths."""
    figures = _figures(stages, headline, breakdown)
    fig_dir = os.path.join(workdir, "report_figures")
    os.makedirs(fig_dir, exist_ok=True)
    for name, png in figures.items():
        with open(os.path.join(fig_dir, f"{name}.png"), "wb") as f:
            f.write(png)
    tables = _tables(stages, headline, breakdown)
    md = [f"# {title}", ""]
    for name, rows in tables:
        md += [f"## {name}", "", _md_table(rows), ""]
    md += ["## Figures", ""] + [f"![{n}](report_figures/{n}.png)" for n in FIGURES]
    md_path = os.path.join(workdir, "report.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>"]
    for name, rows in tables:
        body += [f"<h2>{html.escape(name)}</h2>", _html_table(rows)]
    body += [f'<figure><img id="fig-{n}" alt="{n}" src="data:image/png;base64,{base64.b64encode(figures[n]).decode()}">'
             "</figure>" for n in FIGURES]
    script = ("window.addEventListener('load',function(){var i=document.images,n=0;"
              "for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0){n++;}}"
              "document.body.setAttribute('data-figures-loaded',n+'/'+i.length);});")
    html_path = os.path.join(workdir, "report.html")
    with open(html_path, "w") as f:
        f.write(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
                f"<body>{''.join(body)}<script>{script}</script></body></html>")
    return {"md": md_path, "html": html_path, "figures": fig_dir}
