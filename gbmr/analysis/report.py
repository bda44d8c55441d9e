"""Build the comparison report: score table (md/csv/tex), learning curves, rliable aggregates,
hyperparameter plots and one self-contained index.html, from loaded runs.

Read top to bottom: validate -> score every run -> per-cell table -> curves -> aggregates -> hyperparameters
-> HTML. All figures are also kept as PNG files beside index.html.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gbmr.analysis import plots
from gbmr.analysis.runs import RETURN, TRAIN_WINDOW, Run, align, curve, score_at_budget
from gbmr.analysis.stats import (
    AGGREGATES,
    aggregate_estimates,
    bootstrap_mean_ci,
    improvement_estimates,
    normaliser,
    performance_profiles,
)
from gbmr.core.errors import GbmrError

CURVE_POINTS = 200
RUNNING, SHORT = "†", "‡"


@dataclass
class Report:
    """What build_report made, for the CLI to summarise and tests to inspect."""

    index: Path
    scores: pd.DataFrame  # one row per method x env: n, mean, ci_low, ci_high, best, running, short
    runs: pd.DataFrame  # one row per run: identity, status, score, normalised score
    aggregates: pd.DataFrame | None = None
    improvement: pd.DataFrame | None = None
    figures: dict[str, Path] = field(default_factory=dict)


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 1 or x == 0 else f"{x:.3f}"


def validate(runs: list[Run], budget: int | None) -> None:
    """The input errors a user can make beyond a bad path: disjoint envs, a budget no run reached."""
    if not runs:
        raise GbmrError("no runs found")
    envs_of: dict[str, set[str]] = {}
    for run in runs:
        envs_of.setdefault(run.algo, set()).add(run.env)
    if len(envs_of) > 1 and not set.intersection(*envs_of.values()):
        listing = "; ".join(f"{a}: {', '.join(sorted(e))}" for a, e in sorted(envs_of.items()))
        raise GbmrError(f"the algorithms share no environment, so there is nothing to compare ({listing})")
    if budget is not None:
        longest = max(r.last_step for r in runs)
        if budget <= 0:
            raise GbmrError(f"--budget must be a positive number of env steps, got {budget}")
        if budget > longest:
            raise GbmrError(f"budget {budget:,} steps is beyond every run "
                            f"(the longest reached {longest:,} steps)")


def score_runs(runs: list[Run], budget: int | None, metric: str, column: str = RETURN) -> pd.DataFrame:
    """One row per run with its raw score at the budget and its score normalised per env."""
    frame = pd.DataFrame(
        {
            "method": [r.method for r in runs],
            "algo": [r.algo for r in runs],
            "variant": [r.variant for r in runs],
            "env": [r.env for r in runs],
            "seed": [r.seed for r in runs],
            "status": [r.status for r in runs],
            "last_step": [r.last_step for r in runs],
            "score": [score_at_budget(r, budget, metric) for r in runs],
            "path": [str(r.path) for r in runs],
        }
    )
    frame["running"] = frame.status != "complete"
    frame["short"] = ~frame.running & (budget is not None) & (frame.last_step < (budget or 0))
    frame["normalised"] = np.nan
    frame["norm_source"] = ""
    for env, rows in frame[frame.score.notna()].groupby("env"):
        norm = normaliser(env, rows.score.to_numpy(), column)
        frame.loc[rows.index, "normalised"] = norm(rows.score.to_numpy())
        frame.loc[rows.index, "norm_source"] = f"{norm.source}: {_fmt(norm.low)} .. {_fmt(norm.high)}"
    return frame


def score_table(scored: pd.DataFrame, reps: int, rng: np.random.Generator) -> pd.DataFrame:
    """Mean and 95% bootstrap CI over seeds of each method on each env; best mean per env marked."""
    rows = []
    for (method, env), cell in scored.groupby(["method", "env"], sort=False):
        mean, low, high = bootstrap_mean_ci(cell.score.to_numpy(), reps=reps, rng=rng)
        rows.append({"method": method, "env": env, "n": len(cell), "mean": float(mean),
                     "ci_low": float(low), "ci_high": float(high), "running": int(cell.running.sum()),
                     "short": int(cell.short.sum())})
    table = pd.DataFrame(rows)
    table["best"] = table["mean"] == table.groupby("env")["mean"].transform("max")
    return table


def _cell(row: pd.Series, bold: tuple[str, str]) -> str:
    text = f"{_fmt(row['mean'])} [{_fmt(row.ci_low)}, {_fmt(row.ci_high)}]"
    text = f"{bold[0]}{text}{bold[1]}" if row.best else text
    return text + (RUNNING if row.running else "") + (SHORT if row.short else "")


def score_grid(table: pd.DataFrame, bold: tuple[str, str]) -> pd.DataFrame:
    """method x env grid of formatted cells, '-' where a method did not run an env."""
    cells = table.assign(text=table.apply(_cell, axis=1, bold=bold))
    envs = list(dict.fromkeys(table.env))
    methods = list(dict.fromkeys(table.method))
    grid = cells.pivot(index="method", columns="env", values="text")
    return grid.reindex(index=methods, columns=envs).fillna("-")


def _latex_escape(text: str) -> str:
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", RUNNING: r"$^\dagger$",
             SHORT: r"$^\ddagger$"}
    return "".join(table.get(ch, ch) for ch in text)


def write_tables(table: pd.DataFrame, out: Path, caption: str) -> None:
    """scores.csv (tidy, full precision), scores.md and scores.tex (grid, best in bold)."""
    table.to_csv(out / "scores.csv", index=False)
    md = score_grid(table, ("**", "**"))
    lines = ["| method | " + " | ".join(md.columns) + " |", "|---" * (len(md.columns) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(row) + " |" for m, row in md.iterrows()]
    (out / "scores.md").write_text(caption + "\n\n" + "\n".join(lines) + "\n")
    tex = score_grid(table, ("\x00", "\x01"))
    body = [
        " & ".join(_latex_escape(c).replace("\x00", r"\textbf{").replace("\x01", "}") for c in (m, *row))
        + r" \\"
        for m, row in tex.iterrows()
    ]
    (out / "scores.tex").write_text(
        "% " + caption.replace("\n", "\n% ") + "\n"
        + r"\begin{tabular}{l" + "r" * len(tex.columns) + "}\n\\toprule\n"
        + " & ".join(_latex_escape(c) for c in ("method", *tex.columns)) + r" \\" + "\n\\midrule\n"
        + "\n".join(body) + "\n\\bottomrule\n\\end{tabular}\n"
    )


def curve_figures(runs: list[Run], metric: str, budget: int | None, reps: int, rng: np.random.Generator,
                  colors: dict, out: Path, column: str = RETURN) -> dict[str, Path]:
    """Per env: every run's curve interpolated onto one grid of env steps, then mean and CI across seeds."""
    figures = {}
    ylabel = f"training {column} (moving average)" if metric == "train" else f"evaluation {column}"
    for i, env in enumerate(dict.fromkeys(r.env for r in runs)):
        env_runs = [r for r in runs if r.env == env]
        curves = {id(r): curve(r, metric) for r in env_runs}
        logged = [c for c in curves.values() if len(c[0])]
        if not logged:
            continue
        grid = np.linspace(min(s[0] for s, _ in logged), max(s[-1] for s, _ in logged), CURVE_POINTS)
        bands = {}
        for method in dict.fromkeys(r.method for r in env_runs):
            aligned = align([curves[id(r)] for r in env_runs if r.method == method], grid)
            bands[method] = bootstrap_mean_ci(aligned, reps=reps, rng=rng)
        figures[f"curve: {env}"] = plots.learning_curves(env, grid, bands, colors, ylabel, budget,
                                                         out / f"curve_{i:02d}.png")
    return figures


def aggregate_inputs(scored: pd.DataFrame) -> tuple[dict[str, np.ndarray], list[str], str]:
    """(runs x tasks) normalised-score matrices per method over the envs every algorithm ran.

    rliable needs the same number of runs on every task, so a method keeps its first n seeds per env, n being
    its smallest seed count. Returns the matrices, the tasks, and a note on what was left out or cut.
    """
    tasks = sorted(set.intersection(*(set(g.env) for _, g in scored.groupby("algo"))))
    matrices, left_out, cut = {}, [], []
    for method, rows in scored.groupby("method", sort=False):
        per_env = [rows[rows.env == env].sort_values("seed").normalised.to_numpy() for env in tasks]
        counts = {len(col) for col in per_env}
        if 0 in counts:
            left_out.append(method)
            continue
        cut += [method] if len(counts) > 1 else []
        matrices[method] = np.stack([col[:min(counts)] for col in per_env], axis=1)
    note = f" Left out (not run on every one of these envs): {', '.join(left_out)}." if left_out else ""
    if cut:
        note += f" Seed counts differ across envs for {', '.join(cut)}: each keeps its smallest count."
    return matrices, tasks, note


def hyperparameter_figures(runs: list[Run], scored: pd.DataFrame, reps: int, rng: np.random.Generator,
                           out: Path) -> dict[str, Path]:
    """For each algorithm and each config key its runs vary in: score against that key, holding the others."""
    figures = {}
    score_of = dict(zip(scored.path, scored.score, strict=True))
    for algo in dict.fromkeys(r.algo for r in runs):
        algo_runs = [r for r in runs if r.algo == algo and np.isfinite(score_of[str(r.path)])]
        keys = list(algo_runs[0].variant_values) if algo_runs else []
        for key in keys:
            rows = []
            for run in algo_runs:
                others = ", ".join(f"{k.removeprefix('agent.')}={v}" for k, v in run.variant_values.items()
                                   if k != key)
                rows.append({"env": run.env, "group": others, "value": run.variant_values[key],
                             "score": score_of[str(run.path)]})
            frame = pd.DataFrame(rows)
            settings = frame.groupby(["env", "group"]).value.transform(lambda v: v.map(repr).nunique())
            frame = frame[settings > 1]
            if frame.empty:
                continue
            cells = []
            for (env, group, _), cell in frame.groupby(["env", "group", frame.value.map(repr)], sort=False):
                mean, low, high = bootstrap_mean_ci(cell.score.to_numpy(), reps=reps, rng=rng)
                cells.append({"env": env, "group": group, "value": cell.value.iloc[0], "mean": mean,
                              "ci_low": low, "ci_high": high})
            name = f"hyper_{algo}_{key}".replace("/", "_")
            figures[f"hyperparameter: {algo}: {key.removeprefix('agent.')}"] = plots.hyperparameter(
                algo, key, pd.DataFrame(cells), out / f"{name}.png")
    return figures


def score_definition(budget: int | None, metric: str, reps: int, column: str = RETURN) -> str:
    of = "" if column == RETURN else f"'s {column}"
    if metric == "eval":
        what = (f"the last greedy evaluation{of} at or before {budget:,} env steps" if budget is not None
                else f"the final greedy evaluation{of}")
    elif metric == "eval-mean":
        upto = f" at or before {budget:,} env steps" if budget is not None else ""
        what = (f"the mean {'' if column == RETURN else f'{column} '}of its greedy evaluations{upto} (the area "
                "under its evaluation curve)")
    else:
        span = f"the last {TRAIN_WINDOW:.0%} of steps before {budget:,}" if budget is not None else (
            f"the last {TRAIN_WINDOW:.0%} of each run's steps")
        what = f"the mean {column} of the training episodes that ended in {span}"
    return (f"Score of a run = {what}. Cells: mean over seeds [95% percentile-bootstrap CI, {reps} "
            f"resamples]; best mean per env in bold. {RUNNING} includes runs still in progress, scored at "
            f"their last logged step; {SHORT} includes runs that ended before the budget, scored at "
            "their end.")


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}
td.best{font-weight:bold;background:#e9f5e9}.note{color:#555;font-size:.92em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}figure{margin:0 0 1em 0}
figcaption{font-size:.9em;color:#555}pre{background:#f7f7f7;padding:.6em;text-align:left;overflow:auto}
details summary{cursor:pointer;color:#0645ad}table.runs td{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:0 1.5em}.status-running{color:#b35900;font-weight:bold}
"""


def _html_table(frame: pd.DataFrame, best: frozenset = frozenset(), table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in (frame.index.name or "", *frame.columns))
    body = []
    for label, row in frame.iterrows():
        cells = [f"<td>{html.escape(str(label))}</td>"]
        for col, value in row.items():
            cls = ' class="best"' if (label, col) in best else ""
            cells.append(f"<td{cls}>{value if str(value).startswith('<') else html.escape(str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _interval_text(frame: pd.DataFrame) -> list[str]:
    return [f"{e:.3f} [{lo:.3f}, {hi:.3f}]" for e, lo, hi in zip(frame.estimate, frame.ci_low, frame.ci_high,
                                                                   strict=True)]


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)} ({html.escape(path.name)})</figcaption></figure>")


def write_html(out: Path, runs: list[Run], scored: pd.DataFrame, table: pd.DataFrame, report: Report,
               caption: str, agg_note: str) -> Path:
    grid = score_grid(table, ("", ""))
    grid.index.name = "method"
    best = frozenset(zip(table.method[table.best], table.env[table.best], strict=True))
    norms = scored[scored.norm_source != ""].groupby("env").norm_source.first()
    parts = [
        f"<h1>gbmr compare: {len(runs)} runs, {scored.method.nunique()} methods, "
        f"{scored.env.nunique()} envs</h1>",
        "<h2>Score table</h2>", f'<p class="note">{html.escape(caption)}</p>',
        _html_table(grid, best, table_id="scores"),
        "<p class='note'>Also as scores.md, scores.csv and scores.tex beside this page.</p>",
        "<h2>Aggregate statistics (rliable)</h2>", f'<p class="note">{html.escape(agg_note)}</p>',
        _html_table(norms.to_frame("normalisation (0 .. 1)")),
    ]
    if report.aggregates is not None:
        agg = report.aggregates.assign(value=_interval_text)
        parts.append(_html_table(agg.pivot(index="method", columns="metric", values="value")[[*AGGREGATES]]))
    if report.improvement is not None and len(report.improvement):
        poi = report.improvement.assign(
            pair=lambda d: [f"P({x} > {y})" for x, y in zip(d.x, d.y, strict=True)], value=_interval_text)
        parts.append(_html_table(poi.set_index("pair")[["value"]].rename_axis("probability of improvement")))
    figures = report.figures
    parts += [_figure(p, name) for name, p in figures.items() if not name.startswith(("curve:", "hyper"))]
    parts.append("<h2>Learning curves</h2><p class='note'>Mean across seeds with a 95% bootstrap CI band; "
                 f"runs logged at different steps are interpolated onto one grid of {CURVE_POINTS} points "
                 "(no extrapolation past a run's last logged step).</p>")
    curves = [_figure(p, name) for name, p in figures.items() if name.startswith("curve:")]
    parts += ["<div class='figs'>", *curves, "</div>"]
    hyper = [_figure(p, name) for name, p in figures.items() if name.startswith("hyperparameter:")]
    parts.append("<h2>Hyperparameters</h2>")
    parts += hyper or ["<p class='note'>No group of runs differs in exactly one config key.</p>"]
    parts.append("<h2>Runs</h2><table class='runs'><thead><tr><th>method</th><th>env</th><th>seed</th>"
                 "<th>status</th><th>last step</th><th>score</th><th>folder and config</th></tr></thead>"
                 "<tbody>")
    for run, row in zip(runs, scored.itertuples(), strict=True):
        status = html.escape(run.status) + (f" {SHORT}" if row.short else "")
        if run.in_progress:
            status = f'<span class="status-running">{status} {RUNNING}</span>'
        parts.append(
            f"<tr><td>{html.escape(run.method)}</td><td>{html.escape(run.env)}</td><td>{run.seed}</td>"
            f"<td>{status}</td><td>{run.last_step:,}</td><td>{_fmt(row.score)}</td><td><details><summary>"
            f"{html.escape(str(run.path))}</summary><pre>{html.escape(run.config_text)}</pre></details></td></tr>")
    parts.append("</tbody></table>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gbmr compare</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def build_report(runs: list[Run], out: Path, budget: int | None = None, metric: str = "eval",
                 reps: int = 2000, seed: int = 0) -> Report:
    """Everything `gbmr compare` writes into `out`, scoring the column the runs were loaded with."""
    validate(runs, budget)
    column = runs[0].column
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scored = score_runs(runs, budget, metric, column)
    valid = scored[scored.score.notna()]
    if valid.empty:
        what = "a finished episode (metrics.csv)" if metric == "train" else "an evaluation (eval.csv)"
        raise GbmrError(f"no run has {what} at or before the budget"
                        + ("" if metric == "train" else "; try --metric train"))
    caption = score_definition(budget, metric, reps, column)
    table = score_table(valid, reps, rng)
    write_tables(table, out, caption)
    report = Report(out / "index.html", table, scored)
    colors = plots.method_colors(list(dict.fromkeys(scored.method)))
    matrices, tasks, left_note = aggregate_inputs(valid)
    agg_note = (f"Normalised scores (0 = low, 1 = high of the range below) over the {len(tasks)} env(s) "
                f"every algorithm ran ({', '.join(tasks)}); stratified bootstrap 95% CIs over runs, {reps} "
                "resamples." + left_note)
    if matrices:
        report.aggregates = aggregate_estimates(matrices, reps=reps, seed=seed)
        report.improvement = improvement_estimates(matrices, reps=reps, seed=seed)
        report.aggregates.to_csv(out / "aggregates.csv", index=False)
        report.improvement.to_csv(out / "probability_of_improvement.csv", index=False)
        report.figures["aggregates"] = plots.aggregates(report.aggregates, colors, out / "aggregates.png")
        all_scores = np.concatenate([m.ravel() for m in matrices.values()])
        taus = np.linspace(min(0.0, all_scores.min()), max(1.0, all_scores.max()), 101)
        profile, profile_ci = performance_profiles(matrices, taus, reps=reps, seed=seed)
        report.figures["performance profiles"] = plots.profiles(taus, profile, profile_ci, colors,
                                                                out / "performance_profiles.png")
        if len(report.improvement):
            report.figures["probability of improvement"] = plots.improvement(
                report.improvement, out / "probability_of_improvement.png")
    report.figures.update(curve_figures(runs, metric, budget, reps, rng, colors, out, column))
    report.figures.update(hyperparameter_figures(runs, scored, reps, rng, out))
    scored.to_csv(out / "runs.csv", index=False)
    write_html(out, runs, scored, table, report, caption, agg_note)
    return report
