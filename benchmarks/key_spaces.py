"""How well each key space groups MinAtar states by what the agent controls: the fraction of a state's k nearest
neighbours (among held-out states) whose agent (MinAtar's channel 0: chicken, player, cannon, paddle, sub) is
in the same cell, for the random projection (the memory agents' default keys) and the inverse-dynamics encoder.

    python benchmarks/key_spaces.py --games Freeway SpaceInvaders Asterix

The inverse encoder is results/minatar/encoders/inverse_<game>.pt when it exists (the runs' encoders), else one
is pretrained here as `gbmr pretrain-inverse --seed 1` would. Held-out states: ``--states`` steps of ez-greedy
play (seed 2, not the pretraining data's seed 1), states without the agent on screen left out.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from gbmr.cli import main as gbmr_main
from gbmr.envs import make_env
from gbmr.experiment.pretraining import collect
from gbmr.nets.encoders import make_encoder

ENCODERS = Path(__file__).resolve().parents[1] / "results" / "minatar" / "encoders"


def agent_cells(obs: np.ndarray) -> np.ndarray:
    """Row-major cell index of the agent (channel 0) per observation, -1 when it is not on screen."""
    plane = obs[:, 0].reshape(len(obs), -1)
    return np.where(plane.any(1), plane.argmax(1), -1)


def same_cell_fraction(keys: np.ndarray, cells: np.ndarray, k: int) -> float:
    d = ((keys[:, None].astype(np.float64) - keys[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argpartition(d, k, axis=1)[:, :k]
    return float((cells[nearest] == cells[:, None]).mean())


def encoder_file(game: str, workdir: Path) -> Path:
    """The runs' encoder of ``game``, else one made by the command itself with its defaults."""
    path = ENCODERS / f"inverse_{game.lower()}.pt"
    if not path.is_file():
        path = workdir / f"inverse_{game.lower()}.pt"
        if gbmr_main(["pretrain-inverse", "--env", f"MinAtar/{game}-v1", "--seed", "1", "--out", str(path)]) != 0:
            raise SystemExit(f"pretrain-inverse failed for {game}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", nargs="+", default=["Freeway"])
    parser.add_argument("--states", type=int, default=3000, help="held-out states per game (default 3000)")
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for game in args.games:
            env = make_env(f"MinAtar/{game}-v1", 2, training=True)
            obs = collect(env, args.states, seed=2, gamma=0.99, policy="ez").obs[:-1]
            cells = agent_cells(obs)
            obs, cells = obs[cells >= 0], cells[cells >= 0]
            batch = torch.from_numpy(obs)
            encoders = {"random_projection": make_encoder("random_projection", env.observation_space, 64, seed=1),
                        "inverse": make_encoder("inverse", env.observation_space,
                                                encoder_path=str(encoder_file(game, Path(workdir))))}
            with torch.no_grad():
                scores = {name: same_cell_fraction(enc(batch).numpy(), cells, args.k) for name, enc in encoders.items()}
            chance = float((np.bincount(cells) ** 2).sum() / len(cells) ** 2)
            rows.append((game, len(cells), scores["random_projection"], scores["inverse"], chance))
    print(f"fraction of a state's {args.k} nearest neighbours with the agent in the same cell")
    print("| game | states | random projection | inverse | two random states |")
    print("|---|---:|---:|---:|---:|")
    for game, n, projection, inverse, chance in rows:
        print(f"| {game} | {n} | {projection:.2f} | {inverse:.2f} | {chance:.2f} |")


if __name__ == "__main__":
    main()
