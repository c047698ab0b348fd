"""The lean pipeline's report: `report.md` (figures as PNG files beside it) and a self-contained
`report.html` (the same figures embedded as base64 PNGs), from the stage results of one run.

`write(workdir, stages, headline, breakdown)` is pure rendering: every figure it draws is a number the
pipeline measured (`leanjax.experiments.pipeline`); nothing here computes a cost.
"""

from __future__ import annotations

import io

from leanjax.train.report import write_report

_MIB = 2**20
_STAGE_COLORS = {"tokens": "C4", "tune": "C2", "lean": "C0", "distill": "C1"}
FIGURES = ("accuracy", "memory", "compute", "cost", "serving_size", "serving_cost")


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def _usd(x: float) -> str:
    return f"${x:.2e}" if x < 0.01 else f"${x:.4f}"


def _figures(stages: dict, headline: dict, breakdown: dict) -> dict[str, bytes]:
    """PNG bytes of each figure in `FIGURES`."""
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

    def bars(ax, labels, values, colors, fmt):
        rects = ax.bar(labels, values, color=colors)
        for r, v in zip(rects, values):
            ax.annotate(fmt(v), (r.get_x() + r.get_width() / 2, r.get_height()), ha="center", va="bottom",
                        fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(axis="x", labelsize=8)

    serve = stages["serve"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = ["brute\n(full FT)", "scratch", "tune proxy\n(val)", "lean\n(QLoRA)", "student\nf32", "serving\n(int8)"]
    values = [stages["brute"]["accuracy"], stages["scratch"]["accuracy"], stages["tune"]["best_val_accuracy"],
              stages["lean"]["accuracy"], stages["distill"]["accuracy"], serve["accuracy"]]
    bars(ax, labels, values, ["gray", "silver", "C2", "C0", "C1", "C3"], lambda v: f"{v:.3f}")
    ax.set(ylabel="accuracy", ylim=(0, 1), title="accuracy at each stage (test tweets; proxy: held-out train)")
    save(fig, "accuracy")

    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = ["brute", "scratch", "tune proxy", f"lean ({stages['lean']['remat']})", "student"]
    values = [stages[k]["peak_bytes"] / _MIB for k in ("brute", "scratch", "tune", "lean", "distill")]
    bars(ax, labels, values, ["gray", "silver", "C2", "C0", "C1"], lambda v: f"{v:.0f}")
    ax.set(ylabel="MiB", title="training memory: compiled train-step peak")
    save(fig, "memory")

    def stacked(ax, parts: dict, brute: float, scale: float, unit: str):
        ax.bar(["brute"], [brute / scale], color="gray")
        bottom = 0.0
        for k, v in parts.items():
            ax.bar(["lean"], [v / scale], bottom=bottom, color=_STAGE_COLORS.get(k, "C5"), label=k)
            bottom += v / scale
        ax.annotate(f"{brute / scale:.3g}", (0, brute / scale), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{bottom:.3g}", (1, bottom), ha="center", va="bottom", fontsize=8)
        ax.set(ylabel=unit)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    stacked(ax, breakdown["lean_flops"], stages["brute"]["train_flops"], 1e12, "TFLOP")
    ax.set_title("training compute (compiled FLOPs x steps)")
    save(fig, "compute")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    stacked(ax, breakdown["lean_usd"], stages["brute"]["usd"], 1e-3, "milli-$")
    ax.set_title("$ per run (measured wall time x price)")
    save(fig, "cost")

    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = ["brute f32", "lean teacher\n(NF4 + LoRA)", "student f32", "student int8"]
    values = [serve["arms"]["brute"]["weight_bytes"], stages["lean"]["weight_bytes"], serve["student_f32_bytes"],
              serve["arms"]["student_int8"]["weight_bytes"]]
    bars(ax, labels, [v / _MIB for v in values], ["gray", "C0", "C1", "C3"], lambda v: f"{v:.1f}")
    ax.set(ylabel="MiB of weights", title="serving size")
    save(fig, "serving_size")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    values = [serve["arms"][k]["usd_per_1k_requests"] for k in ("brute", "student_int8")]
    bars(ax, ["brute f32", "student int8"], [v * 1e6 for v in values], ["gray", "C3"], lambda v: f"{v:.3g}")
    ax.set(ylabel="micro-$ per 1k requests", title="serving cost (measured, batch "
                                                    f"{serve['batch_size']})")
    save(fig, "serving_cost")
    return out


def _tables(stages: dict, headline: dict, breakdown: dict, goals: dict) -> list[tuple[str, list[list[str]]]]:
    brute, lean, serve, tok, tun, dist = (stages[k] for k in ("brute", "lean", "serve", "tokens", "tune", "distill"))
    rows_headline = [["key", "measured", "goal"]]
    for k, v in headline.items():
        rows_headline.append([f"`{k}`", _fmt(v, 4), goals.get(k, "")])

    lean_usd = sum(breakdown["lean_usd"].values())
    lean_flops = sum(breakdown["lean_flops"].values())
    drivers = [["cost driver", "brute (full fine-tune)", "lean pipeline", "lean / brute"],
               ["train-step peak memory", f"{brute['peak_bytes'] / _MIB:.1f} MiB",
                f"{max(breakdown['lean_peak_bytes'].values()) / _MIB:.1f} MiB (largest lean step)",
                _fmt(headline["train_memory_ratio"])],
               ["training compute", f"{brute['train_flops'] / 1e12:.3g} TFLOP",
                f"{lean_flops / 1e12:.3g} TFLOP (all-in)",
                _fmt(headline["train_compute_ratio"])],
               ["$ per run", _usd(brute["usd"]), _usd(lean_usd), _fmt(headline["train_cost_ratio"])],
               ["serving size", f"{serve['arms']['brute']['weight_bytes'] / _MIB:.1f} MiB f32",
                f"{serve['arms']['student_int8']['weight_bytes'] / _MIB:.2f} MiB int8 student",
                _fmt(headline["serving_size_ratio"])],
               ["$ per 1k requests", _usd(serve["arms"]["brute"]["usd_per_1k_requests"]),
                _usd(serve["arms"]["student_int8"]["usd_per_1k_requests"]), _fmt(headline["serving_cost_ratio"])],
               ["accuracy", _fmt(brute["accuracy"]),
                f"{_fmt(serve['accuracy'])} served ({_fmt(lean['accuracy'])} teacher)",
                f"{(serve['accuracy'] - brute['accuracy']) * 100:+.1f} points"]]

    pct = lambda x: f"{x:.0%}"  # noqa: E731
    cov = tok["coverage"]
    saved = [["stage", "what it did", "what it saved (measured)", "wall", "$"],
             ["tokens", f"{tok['num_new']} new tokens (e.g. {', '.join(tok['examples'][:5])}), warm-started "
              "from the mean of their WordPiece pieces",
              f"mean tokens per tweet {tok['mean_tokens']['base']:.1f} -> {tok['mean_tokens']['extended']:.1f}; "
              f"at seq {cov['lean_seq_len']} coverage {pct(cov['base_at_lean_seq'])} -> "
              f"{pct(cov['extended_at_lean_seq'])} "
              f"(brute: seq {cov['brute_seq_len']}, {pct(cov['base_at_brute_seq'])})",
              f"{tok['wall_s']:.0f} s", _usd(tok["usd"])],
             ["tune", f"TPE + Hyperband, {tun['n_trials']} trials on a {tun['proxy_layers']}-layer QLoRA proxy; "
              f"best lr {tun['best_learning_rate']:.2e}" + ("; EL2N scores of the pool" if tun["score_flops"] else ""),
              f"{tun['pruned']} trial{'' if tun['pruned'] == 1 else 's'} pruned: "
              f"{tun['steps']} of {tun['full_budget_steps']} trial steps; "
              f"{breakdown['lean_flops']['tune'] / brute['train_flops']:.3f} x brute's FLOPs",
              f"{tun['wall_s']:.0f} s", _usd(tun["usd"])],
             ["lean", f"QLoRA (NF4 + rank-r LoRA), remat `{lean['remat']}`, {lean['select']} "
              f"({lean['train_examples']} of {lean['pool_examples']}), {lean['steps']} steps, async eval",
              f"train-step peak {breakdown['train_memory_ratio.lean_run_only']:.3f} x brute's; FLOPs "
              f"{breakdown['train_compute_ratio.lean_run_only']:.3f} x brute's; "
              f"{lean['trainable_params']:,} trainable params",
              f"{lean['wall_s']:.0f} s", _usd(lean["usd"])],
             ["distill", f"{dist['student_layers']}-layer student, {dist['student_vocab']}-token vocabulary, "
              f"offline KD from {dist['cache_examples']} cached teacher logits, {dist['steps']} steps",
              f"student {dist['params']:,} params vs brute {brute['params']:,}",
              f"{dist['wall_s']:.0f} s", _usd(dist["usd"])],
             ["serve", "student int8 (W8A8 kernels, int8 embeddings)",
              f"size {headline['serving_size_ratio']:.3f} x brute's, $/1k requests "
              f"{headline['serving_cost_ratio']:.3f} x brute's",
              f"{serve['wall_s']:.0f} s", "-"]]
    references = [["run", "accuracy", "steps", "train-step peak", "TFLOP", "wall", "$"]]
    for k in ("brute", "scratch"):
        s = stages[k]
        references.append([k, _fmt(s["accuracy"]), str(s["steps"]), f"{s['peak_bytes'] / _MIB:.1f} MiB",
                           f"{s['train_flops'] / 1e12:.3g}", f"{s['wall_s']:.0f} s", _usd(s["usd"])])
    return [("Headline", rows_headline), ("Cost drivers before / after", drivers),
            ("Which stage saved what", saved), ("Brute-force references", references)]


GOALS = {"train_memory_ratio": "<= 0.10", "train_compute_ratio": "<= 0.2", "serving_size_ratio": "<= 0.05",
         "serving.accuracy": "within 1 point of brute.accuracy or better"}


_CAPTIONS = {"accuracy": "Accuracy at each stage", "memory": "Training memory", "compute": "Training compute",
             "cost": "$ per run", "serving_size": "Serving size", "serving_cost": "$ per 1k requests"}

_NOTES = (
    "Every figure was measured in this run on this machine: memory is the compiled train step's peak "
    "(arguments + outputs + temporaries - aliased, `memory_analysis()`); FLOPs are the compiled programs' "
    "(HLO counter, while-loop bodies times their trip counts) times the steps or batches run; $ is each "
    "stage's wall time (compilation and evaluation included) times the price table's rate for this machine. "
    "Lean compute is all-in: the tuning study's trial steps and evaluations and the EL2N scoring pass, the "
    "QLoRA run, the teacher's logit cache and the student's steps. Test-set evaluation is not counted as "
    "training compute on either side (its wall time is in the $)."
)


def write(workdir: str, stages: dict, headline: dict, breakdown: dict, config: dict | None = None,
          title: str = "leanjax: the lean pipeline") -> dict[str, str]:
    """Write `report.md`, `report_figures/*.png` and `report.html` into `workdir`; returns their paths."""
    figures = _figures(stages, headline, breakdown)
    device = f"{stages['brute'].get('usd_per_hour', 0):.3f} $/hour for this machine"
    return write_report(workdir, title=title, paragraphs=[_NOTES, f"Price: {device}."],
                        tables=_tables(stages, headline, breakdown, GOALS),
                        figures={n: (_CAPTIONS[n], figures[n]) for n in FIGURES})
