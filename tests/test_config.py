"""Config layering, coercion and the errors a user sees for bad keys and values."""

import pytest

from gbmr.agents.dqn import DQNConfig
from gbmr.config import build_config, coerce, parse_overrides
from gbmr.core.errors import GbmrError


def test_layers_override_in_order(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("total_steps: 1234\nagent:\n  lr: 0.5\n  batch_size: 16\nenv_options:\n  frame_skip: 2\n")
    cfg = build_config("dqn", "CartPole-v1", DQNConfig, "classic", config_file=str(user),
                       overrides=["lr=1e-4", "gamma=0.9", "env_options.noop_max=5"], seed=7)
    assert cfg.preset == "classic"
    assert cfg.total_steps == 1234  # file beats preset
    assert cfg.agent.lr == pytest.approx(1e-4)  # --set beats file
    assert cfg.agent.batch_size == 16
    assert cfg.agent.n_step == 3  # from the classic preset
    assert cfg.agent.gamma == pytest.approx(0.9)
    assert cfg.seed == 7
    assert cfg.env_options == {"frame_skip": 2, "noop_max": 5}


def test_unknown_key_suggests_closest():
    with pytest.raises(GbmrError, match="unknown config key.*'lrr'.*Did you mean 'lr'"):
        build_config("dqn", "CartPole-v1", DQNConfig, "classic", overrides=["lrr=1"])


def test_ill_typed_value_names_the_key():
    with pytest.raises(GbmrError, match="'batch_size' expects int, got 'big'"):
        build_config("dqn", "CartPole-v1", DQNConfig, "classic", overrides=["batch_size=big"])
    with pytest.raises(GbmrError, match="'double' expects bool"):
        build_config("dqn", "CartPole-v1", DQNConfig, "classic", overrides=["double=3"])


def test_unknown_preset_lists_presets():
    with pytest.raises(GbmrError, match="unknown preset.*Valid choices: atari, classic"):
        build_config("dqn", "CartPole-v1", DQNConfig, "classic", preset="nope")


def test_coerce_converts_harmless_cases():
    assert coerce("n", "1e5", int) == 100000
    assert coerce("n", 3, float) == 3.0
    assert coerce("h", [64, 64], tuple[int, ...]) == (64, 64)
    with pytest.raises(GbmrError):
        coerce("n", 2.5, int)


def test_parse_overrides_shapes():
    assert parse_overrides(["a=1", "agent.b=x", "env.c=true"]) == {
        "_flat": {"a": 1}, "agent": {"b": "x"}, "env_options": {"c": True}}
    with pytest.raises(GbmrError, match="key=value"):
        parse_overrides(["novalue"])


def test_dotted_key_sets_one_entry_of_a_mapping_hyperparameter(tmp_path):
    """gbmr-dqn's `memory` mapping: `memory.n_step=0` changes that entry and keeps the preset's others; a
    later layer's dotted key beats an earlier one's; a dotted key on a plain hyperparameter is refused."""
    from gbmr.agents.gbmr_dqn import GBMRDQNConfig

    user = tmp_path / "mine.yaml"
    user.write_text("agent:\n  memory.sweeps: 7\n  memory.eta: 0.5\n")
    cfg = build_config("gbmr-dqn", "MinAtar/Breakout-v1", GBMRDQNConfig, "minatar", config_file=str(user),
                       overrides=["memory.n_step=0", "agent.memory.eta=0.2"])
    assert cfg.agent.memory["n_step"] == 0 and cfg.agent.memory["sweeps"] == 7
    assert cfg.agent.memory["eta"] == pytest.approx(0.2)
    assert cfg.agent.memory["capacity"] == 100_000  # from the minatar preset
    with pytest.raises(GbmrError, match="'lr' is not one.*: memory"):
        build_config("gbmr-dqn", "MinAtar/Breakout-v1", GBMRDQNConfig, "minatar", overrides=["agent.lr.x=1"])
    with pytest.raises(GbmrError, match="'lr.x'.*Did you mean 'lr'"):
        build_config("gbmr-dqn", "MinAtar/Breakout-v1", GBMRDQNConfig, "minatar", overrides=["lr.x=1"])


def test_every_preset_builds_a_valid_config():
    """A misspelt or ill-typed key in a preset file (or in gbmr-dqn's `memory` mapping, which only its agent
    reads) fails here, not hours into a sweep. Presets that need a file (encoder_path) load their keys all the same."""
    from gbmr.agents import agent_class
    from gbmr.agents.gbmr import GBMRSweepConfig
    from gbmr.config import PRESETS_DIR, make_agent_config, preset_names

    algos = sorted(p.name for p in PRESETS_DIR.iterdir() if p.is_dir() and p.name != "sweeps")
    assert {"dqn", "gbmr", "gbmr-dqn", "gq", "nec", "mfec"} <= set(algos)
    for algo in algos:
        for preset in preset_names(algo):
            cfg = build_config(algo, "CartPole-v1", agent_class(algo).Config, "classic", preset=preset)
            assert cfg.preset == preset
            if algo == "gbmr-dqn":
                make_agent_config(GBMRSweepConfig, cfg.agent.memory)
