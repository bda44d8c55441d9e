"""`gbmr compare`: statistics against hand-computed values on small run folders this file writes itself."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pandas as pd
import pytest
from rliable import metrics as rlm

from gbmr.analysis.cli import add_compare_parser, run_compare
from gbmr.analysis.report import build_report
from gbmr.analysis.runs import align, curve, load_run, load_runs, score_at_budget
from gbmr.analysis.stats import (
    aggregate_estimates,
    aggregate_metrics,
    atari_game,
    bootstrap_mean_ci,
    iqm,
    normaliser,
    probability_of_improvement,
)
from gbmr.analysis.synthetic import write_run
from gbmr.core.errors import GbmrError

REPS = 300  # bootstrap resamples in end-to-end tests: enough for a CI, fast


def compare_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["compare", *argv, "--reps", str(REPS)])


def eval_run(root, algo, env, seed, evals, status="complete", agent=None):
    """A run whose evaluations are `evals` at steps 100, 200, ...; one training episode per evaluation."""
    steps = 100 * np.arange(1, len(evals) + 1)
    return write_run(root / f"{algo}_{env.replace('/', '-')}_{seed}_{agent}", algo, env, seed, steps, evals,
                     steps, evals, status=status, agent=agent)


# ---------------------------------------------------------------- scores of one run


def test_eval_score_is_last_evaluation_at_or_before_budget(tmp_path):
    run = load_run(eval_run(tmp_path, "dqn", "CartPole-v1", 0, [1.0, 2.0, 3.0]))
    assert score_at_budget(run, 250, "eval") == 2.0
    assert score_at_budget(run, 200, "eval") == 2.0
    assert score_at_budget(run, None, "eval") == 3.0
    assert np.isnan(score_at_budget(run, 50, "eval"))


def test_eval_mean_score_is_mean_of_evaluations_at_or_before_budget(tmp_path):
    run = load_run(eval_run(tmp_path, "dqn", "CartPole-v1", 0, [1.0, 2.0, 6.0]))
    assert score_at_budget(run, 250, "eval-mean") == 1.5
    assert score_at_budget(run, None, "eval-mean") == 3.0
    assert np.isnan(score_at_budget(run, 50, "eval-mean"))


def test_train_score_is_mean_of_last_tenth_of_steps(tmp_path):
    steps = np.arange(1, 101)
    run = load_run(write_run(tmp_path / "r", "dqn", "CartPole-v1", 0, steps, steps.astype(float)))
    assert score_at_budget(run, 100, "train") == pytest.approx(np.mean(np.arange(91, 101)))  # (90, 100]
    assert score_at_budget(run, 50, "train") == pytest.approx(np.mean([46, 47, 48, 49, 50]))  # (45, 50]
    assert score_at_budget(run, None, "train") == pytest.approx(95.5)
    sparse = load_run(write_run(tmp_path / "s", "dqn", "CartPole-v1", 0, [10, 60], [1.0, 7.0]))
    assert score_at_budget(sparse, 50, "train") == 1.0  # no episode in (45, 50]: the last one before it


# ---------------------------------------------------------------- statistics


def test_iqm_of_known_array_and_rliable_agreement():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # drops 1, 2 and 7, 8
    assert iqm(np.array([[100.0, 1.0], [2.0, 3.0], [4.0, -50.0], [5.0, 6.0]])) == pytest.approx(3.5)
    scores = np.random.default_rng(1).normal(size=(7, 5))
    expected = [rlm.aggregate_iqm(scores), rlm.aggregate_median(scores), rlm.aggregate_mean(scores),
                rlm.aggregate_optimality_gap(scores)]
    np.testing.assert_allclose(aggregate_metrics(scores), expected)
    x, y = scores, np.random.default_rng(2).normal(size=(4, 5)) + 0.3
    assert probability_of_improvement(x, y) == pytest.approx(rlm.probability_of_improvement(x, y))
    assert probability_of_improvement(x, x) == pytest.approx(0.5)


def test_aggregate_estimates_point_values_and_ci_bracket():
    scores = np.array([[0.0, 2.0], [1.0, 3.0], [0.5, 0.5], [2.0, 1.0]])
    table = aggregate_estimates({"a": scores}, reps=500).set_index("metric")
    # sorted: 0 .5 .5 1 | 1 2 2 3 -> IQM = mean(0.5, 1, 1, 2) = 1.125; task means 0.875, 1.625
    assert table.loc["IQM", "estimate"] == pytest.approx(1.125)
    assert table.loc["Median", "estimate"] == pytest.approx(1.25)
    assert table.loc["Mean", "estimate"] == pytest.approx(1.25)
    assert table.loc["Optimality gap", "estimate"] == pytest.approx(1 - np.mean([0, 1, .5, 1, 1, 1, .5, 1]))
    assert (table.ci_low <= table.estimate).all() and (table.estimate <= table.ci_high).all()


def test_bootstrap_ci_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    samples = rng.normal(3.0, 2.0, size=(200, 30))
    covered = 0
    for sample in samples:
        _, low, high = bootstrap_mean_ci(sample, reps=1000, rng=rng)
        covered += low <= 3.0 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_ci_of_curves_ignores_missing_seeds():
    values = np.array([[1.0, 2.0], [3.0, np.nan]])
    mean, low, high = bootstrap_mean_ci(values, reps=200)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    assert low[1] == high[1] == 2.0 and low[0] >= 1.0 and high[0] <= 3.0


def test_atari_normalisation_uses_random_and_human_scores():
    assert atari_game("ALE/Pong-v5") == "pong"
    assert atari_game("ALE/MontezumaRevenge-v5") == "montezuma_revenge"
    assert atari_game("UpNDownNoFrameskip-v4") == "up_n_down"
    assert atari_game("CartPole-v1") is None
    assert len(pd.read_csv(__import__("gbmr").__path__[0] + "/data/atari_scores.csv")) == 57
    pong = normaliser("ALE/Pong-v5", np.array([0.0]))
    # random -20.7, human 14.6
    np.testing.assert_allclose(pong(np.array([-20.7, 14.6, -3.05])), [0.0, 1.0, 0.5])
    breakout = normaliser("ALE/Breakout-v5", np.array([0.0]))
    assert breakout(30.5) == pytest.approx(1.0) and breakout(1.7) == pytest.approx(0.0)


def test_min_max_normalisation_stated_or_observed():
    cartpole = normaliser("CartPole-v1", np.array([10.0, 20.0]))
    assert cartpole(250.0) == pytest.approx(0.5) and cartpole.source == "stated return range"
    minatar = normaliser("MinAtar/Breakout-v1", np.array([2.0, 4.0, 6.0]))
    np.testing.assert_allclose(minatar(np.array([2.0, 4.0, 6.0])), [0.0, 0.5, 1.0])
    assert "observed" in minatar.source


def test_interpolation_aligns_runs_logged_at_different_steps():
    grid = np.array([0.0, 50.0, 100.0, 150.0, 200.0])
    a = (np.array([0, 100, 200]), np.array([0.0, 10.0, 20.0]))
    b = (np.array([0, 50, 150]), np.array([0.0, 10.0, 30.0]))
    aligned = align([a, b], grid)
    np.testing.assert_allclose(aligned[0], [0, 5, 10, 15, 20])
    np.testing.assert_allclose(aligned[1, :4], [0, 10, 20, 30])
    assert np.isnan(aligned[1, 4])  # b stopped at 150: not extrapolated


# ---------------------------------------------------------------- the report


def test_report_table_matches_hand_computed_means(tmp_path):
    finals = {("dqn", "CartPole-v1"): [100, 200, 300], ("ppo", "CartPole-v1"): [400, 450, 500],
              ("dqn", "ALE/Pong-v5"): [5, 10, 15], ("ppo", "ALE/Pong-v5"): [-20, -10, 0]}
    for (algo, env), values in finals.items():
        for seed, final in enumerate(values):
            eval_run(tmp_path / "runs", algo, env, seed, [0.0, final / 2, final])
    report = build_report(load_runs([str(tmp_path / "runs")]), tmp_path / "out", budget=300, reps=REPS)
    table = report.scores.set_index(["method", "env"])
    for key, values in finals.items():
        assert table.loc[key, "mean"] == pytest.approx(np.mean(values))
        assert table.loc[key, "ci_low"] <= np.mean(values) <= table.loc[key, "ci_high"]
    assert table.loc[("ppo", "CartPole-v1"), "best"] and table.loc[("dqn", "ALE/Pong-v5"), "best"]
    assert table.best.sum() == 2
    md = (tmp_path / "out" / "scores.md").read_text()
    assert "**450.0 [" in md and "**10.0 [" in md and "last greedy evaluation at or before 300" in md
    assert r"\textbf{450.0 [" in (tmp_path / "out" / "scores.tex").read_text()
    assert pd.read_csv(tmp_path / "out" / "scores.csv").shape[0] == 4
    # rliable aggregates on normalised scores: dqn on Pong (random -20.7, human 14.6) and CartPole (0..500)
    runs = report.runs.set_index(["method", "env", "seed"])
    assert runs.loc[("dqn", "ALE/Pong-v5", 1), "normalised"] == pytest.approx((10 + 20.7) / 35.3)
    assert runs.loc[("dqn", "CartPole-v1", 0), "normalised"] == pytest.approx(0.2)
    agg = report.aggregates.set_index(["method", "metric"])
    dqn = np.array([[0.2, 0.4, 0.6], [(5 + 20.7) / 35.3, (10 + 20.7) / 35.3, (15 + 20.7) / 35.3]]).T
    assert agg.loc[("dqn", "Mean"), "estimate"] == pytest.approx(dqn.mean())
    assert agg.loc[("dqn", "IQM"), "estimate"] == pytest.approx(rlm.aggregate_iqm(dqn))
    assert set(report.improvement.x + ">" + report.improvement.y) == {"dqn>ppo"}
    page = (tmp_path / "out" / "index.html").read_text()
    # aggregates, profiles, probability of improvement, 2 curves
    assert page.count("data:image/png;base64,") == len(report.figures) >= 5
    assert page.count("<details>") == 12 and "algo: dqn" in page


def test_runs_with_different_logging_steps_all_reach_the_curves(tmp_path):
    write_run(tmp_path / "a", "dqn", "CartPole-v1", 0, [10, 20], [1.0, 2.0], [0, 100, 200], [0.0, 10.0, 20.0])
    write_run(tmp_path / "b", "dqn", "CartPole-v1", 1, [10, 20], [1.0, 2.0], [0, 50, 150], [0.0, 10.0, 30.0])
    report = build_report(load_runs([str(tmp_path / "?")]), tmp_path / "out", reps=REPS)
    assert report.scores.loc[0, "n"] == 2 and report.scores.loc[0, "mean"] == pytest.approx(25.0)
    assert "curve: CartPole-v1" in report.figures


def test_compare_by_mean_of_evaluations(tmp_path):
    eval_run(tmp_path, "dqn", "CartPole-v1", 0, [10.0, 20.0, 60.0])
    eval_run(tmp_path, "dqn", "CartPole-v1", 1, [0.0, 40.0, 50.0])
    assert run_compare(compare_args(str(tmp_path), "--out", str(tmp_path / "out"), "--metric", "eval-mean",
                                    "--budget", "200")) == 0
    md = (tmp_path / "out" / "scores.md").read_text()
    assert "mean of its greedy evaluations at or before 200 env steps" in md
    assert "**17.5 [15.0, 20.0]**" in md  # seeds (10 + 20) / 2 and (0 + 40) / 2


def test_in_progress_run_is_included_and_marked(tmp_path):
    eval_run(tmp_path, "dqn", "CartPole-v1", 0, [10.0, 20.0, 30.0, 40.0])
    eval_run(tmp_path, "dqn", "CartPole-v1", 1, [10.0, 20.0], status="running")
    report = build_report(load_runs([str(tmp_path)]), tmp_path / "out", budget=400, reps=REPS)
    runs = report.runs.set_index("seed")
    assert runs.loc[1, "running"] and not runs.loc[0, "running"]
    assert runs.loc[1, "score"] == 20.0  # its last logged evaluation
    assert report.scores.loc[0, "mean"] == pytest.approx(30.0) and report.scores.loc[0, "running"] == 1
    assert "**30.0 [20.0, 40.0]**†" in (tmp_path / "out" / "scores.md").read_text()
    assert 'class="status-running">running †' in (tmp_path / "out" / "index.html").read_text()


def test_hyperparameter_variants_and_plot(tmp_path):
    for lr, final in ((0.0001, 10.0), (0.001, 30.0), (0.01, 20.0)):
        for seed in range(2):
            eval_run(tmp_path, "dqn", "CartPole-v1", seed, [0.0, final + seed],
                     agent={"lr": lr, "gamma": 0.99})
    # another env with its own (fixed) lr does not split dqn into more variants
    eval_run(tmp_path, "ppo", "CartPole-v1", 0, [0.0, 5.0], agent={"lr": 0.5, "gamma": 0.9})
    eval_run(tmp_path, "ppo", "Acrobot-v1", 0, [0.0, 5.0], agent={"lr": 0.7, "gamma": 0.9})
    runs = load_runs([str(tmp_path)])
    assert {r.method for r in runs} == {"dqn (lr=0.0001)", "dqn (lr=0.001)", "dqn (lr=0.01)", "ppo"}
    report = build_report(runs, tmp_path / "out", reps=REPS)
    assert list(report.figures).count("hyperparameter: dqn: lr") == 1
    assert report.scores.set_index("method").loc["dqn (lr=0.001)", "mean"] == pytest.approx(30.5)


def test_ablation_labels_name_only_what_changed(tmp_path):
    """Most runs share a baseline config; each ablation is labelled by the keys it changed, not by every key
    that varies somewhere (which would repeat ``k=50, missing=zero`` on every label)."""
    for seed in range(3):
        eval_run(tmp_path, "gbmr", "MinAtar/Breakout-v1", seed, [0.0, 5.0], agent={"k": 50, "missing": "zero"})
    eval_run(tmp_path, "gbmr", "MinAtar/Breakout-v1", 7, [0.0, 8.0], agent={"k": 50, "missing": "skip"})
    eval_run(tmp_path, "gbmr", "MinAtar/Breakout-v1", 8, [0.0, 9.0], agent={"k": 10, "missing": "skip"})
    runs = load_runs([str(tmp_path)])
    assert sorted({r.method for r in runs}) == ["gbmr", "gbmr (k=10, missing=skip)", "gbmr (missing=skip)"]
    assert all(set(r.variant_values) == {"agent.k", "agent.missing"} for r in runs)  # hyperparameter plots


def test_a_key_missing_from_older_records_does_not_split_a_method(tmp_path):
    """Runs saved before a config key existed lack it; they are the same method as the runs that record it
    at one value, not a variant "key=None"."""
    for seed in range(2):
        eval_run(tmp_path, "gbmr", "MinAtar/Freeway-v1", seed, [0.0, 1.0], agent={"k": 50})
    eval_run(tmp_path, "gbmr", "MinAtar/Freeway-v1", 2, [0.0, 2.0], agent={"k": 50, "backup_eta": 1.0})
    eval_run(tmp_path, "gbmr", "MinAtar/Freeway-v1", 3, [0.0, 3.0], agent={"k": 5, "backup_eta": 1.0})
    runs = load_runs([str(tmp_path)])
    assert sorted(r.method for r in runs) == ["gbmr", "gbmr", "gbmr", "gbmr (k=5)"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: [str(root / "nothing*")], "no files match"),
        (lambda root: [str(root / "missing")], "no such run folder"),
        (lambda root: [str((root / "empty").mkdir() or root / "empty")], "not a run folder: no config.yaml"),
    ],
)
def test_bad_paths_raise_clear_errors(tmp_path, setup, message):
    with pytest.raises(GbmrError, match=re.escape(message)):
        run_compare(compare_args(*setup(tmp_path), "--out", str(tmp_path / "out")))


def test_folder_without_metrics_is_not_a_run(tmp_path):
    run = eval_run(tmp_path, "dqn", "CartPole-v1", 0, [1.0])
    (run / "metrics.csv").unlink()
    with pytest.raises(GbmrError, match="not a run folder: no metrics.csv"):
        run_compare(compare_args(str(run), "--out", str(tmp_path / "out")))


def test_algorithms_without_a_shared_env_are_rejected(tmp_path):
    eval_run(tmp_path, "dqn", "CartPole-v1", 0, [1.0])
    eval_run(tmp_path, "ppo", "Acrobot-v1", 0, [1.0])
    with pytest.raises(GbmrError, match=r"share no environment.*dqn: CartPole-v1; ppo: Acrobot-v1"):
        run_compare(compare_args(str(tmp_path), "--out", str(tmp_path / "out")))


def test_budget_beyond_every_run_is_rejected(tmp_path):
    eval_run(tmp_path, "dqn", "CartPole-v1", 0, [1.0, 2.0])
    with pytest.raises(GbmrError, match=r"budget 1,000 steps is beyond every run \(the longest reached 200"):
        run_compare(compare_args(str(tmp_path), "--out", str(tmp_path / "out"), "--budget", "1000"))


def test_cli_exit_codes(tmp_path, capsys):
    from gbmr.cli import main

    eval_run(tmp_path / "runs", "dqn", "CartPole-v1", 0, [1.0, 2.0])
    assert main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--reps", "200"]) == 0
    assert (tmp_path / "out" / "index.html").is_file()
    assert main(["compare", str(tmp_path / "nope*"), "--out", str(tmp_path / "out")]) == 2
    assert "no files match" in capsys.readouterr().err


# ---------------------------------------------------------------- scoring another column (SMAX's win rate)


def smax_run(root, algo, seed, returns, won):
    """A SMAX run: evaluations at 100, 200, ... with these mean returns and win rates; the training episodes
    ending at the same steps log the same values."""
    steps = 100 * np.arange(1, len(returns) + 1)
    return write_run(root / f"{algo}_{seed}", algo, "SMAX/2s3z", seed, steps, returns, steps, returns,
                     episode_metrics={"won": (won, won)})


def test_compare_by_win_rate_scores_tables_curves_and_aggregates_on_won(tmp_path):
    # qmix has the higher returns, differ the higher win rates: the table must follow the chosen column
    smax_run(tmp_path, "qmix", 0, [5.0, 9.0], [0.0, 0.25])
    smax_run(tmp_path, "qmix", 1, [6.0, 8.0], [0.0, 0.75])
    smax_run(tmp_path, "differ", 0, [1.0, 2.0], [0.5, 1.0])
    smax_run(tmp_path, "differ", 1, [1.0, 3.0], [0.25, 0.5])
    runs = load_runs([str(tmp_path)], "won")
    assert curve(runs[0], "eval")[1].tolist() in ([0.0, 0.25], [0.0, 0.75], [0.5, 1.0], [0.25, 0.5])
    report = build_report(runs, tmp_path / "out", reps=REPS)
    table = report.scores.set_index("method")
    assert table.loc["qmix", "mean"] == pytest.approx(0.5)  # (0.25 + 0.75) / 2
    assert table.loc["differ", "mean"] == pytest.approx(0.75)  # (1.0 + 0.5) / 2
    assert table.loc["differ", "best"] and not table.loc["qmix", "best"]
    normalised = report.runs.set_index(["method", "seed"]).normalised  # win rate's stated range 0..1
    assert normalised.loc[("differ", 1)] == pytest.approx(0.5)
    agg = report.aggregates.set_index(["method", "metric"])
    assert agg.loc[("differ", "Mean"), "estimate"] == pytest.approx(0.75)
    assert "final greedy evaluation's won" in (tmp_path / "out" / "scores.md").read_text()
    # eval-mean: differ (0.5 + 1.0) / 2 and (0.25 + 0.5) / 2 -> 0.5625; train: the last episode's won
    mean_of_evals = build_report(runs, tmp_path / "o2", metric="eval-mean", reps=REPS).scores
    assert mean_of_evals.set_index("method").loc["differ", "mean"] == pytest.approx(0.5625)
    train = build_report(runs, tmp_path / "o3", metric="train", reps=REPS).scores
    assert train.set_index("method").loc["qmix", "mean"] == pytest.approx(0.5)
    by_return = build_report(load_runs([str(tmp_path)]), tmp_path / "o4", reps=REPS).scores
    assert by_return.set_index("method").loc["qmix", "mean"] == pytest.approx(8.5)


def test_a_column_some_run_lacks_is_rejected_naming_the_columns_all_have(tmp_path):
    smax_run(tmp_path, "qmix", 0, [5.0], [1.0])
    eval_run(tmp_path, "qmix", "SMAX/2s3z", 1, [2.0])  # no won column
    with pytest.raises(GbmrError, match=r"1 of the 2 runs .* have no column 'won'; the columns all runs "
                                        r"have: return$"):
        run_compare(compare_args(str(tmp_path), "--out", str(tmp_path / "out"), "--column", "won"))
    with pytest.raises(GbmrError, match=r"no column 'win_rate'; the columns all runs have: return, won$"):
        load_runs([str(tmp_path / "qmix_0")], "win_rate")
