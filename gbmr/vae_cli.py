"""`gbmr pretrain-vae`: the argparse wiring the main CLI mounts, and the command (in experiment/vae_training.py)."""

from __future__ import annotations

import argparse


def add_pretrain_vae_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `pretrain-vae` on the main CLI's subparsers (its handler is set as `func`)."""
    parser = subparsers.add_parser(
        "pretrain-vae",
        help="train the VAE encoder (seed 001) on random-policy data, for --set encoder=vae --set vae_path=FILE",
        description="Collect STEPS observations of ENV under a random policy with their Monte-Carlo returns, train "
        "a VAE (reconstruction + KL + value decoding) on them, and save it to FILE (atomically; it loads with "
        "torch.load(weights_only=True)). Then: gbmr train --algo gq --env ENV --set encoder=vae "
        "--set vae_path=FILE (also gbmr, gcmr, gbmr-sweep, nec, mfec).",
    )
    parser.add_argument("--env", required=True, help="environment id (see `gbmr list`)")
    parser.add_argument("--steps", type=int, default=50_000, help="environment steps of data (default 50000)")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to save the VAE (e.g. vae.pt)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10, help="passes over the data (default 10)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--latent-dim", type=int, default=32, help="size of the latent = of the keys (default 32)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256],
                        help="MLP layers, or the fully connected layer after a CNN (default 256)")
    parser.add_argument("--torso", default="auto", help="auto | mlp | nature_cnn | minatar_cnn")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount of the value targets")
    parser.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    parser.add_argument("--value-weight", type=float, default=1.0, help="weight of the value-decoding term")
    parser.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                        help="environment option, as a run's env_options (must match the runs that use the VAE)")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.set_defaults(func=run_pretrain_vae)


def run_pretrain_vae(args: argparse.Namespace) -> int:
    """Train and save; user errors raise GbmrError (exit 2)."""
    import torch  # heavy imports only when the command runs

    from gbmr.config import parse_overrides
    from gbmr.errors import GbmrError
    from gbmr.experiment.vae_training import VAETraining, pretrain_vae

    if args.torch_threads < 1:
        raise GbmrError(f"--torch-threads must be at least 1, got {args.torch_threads}")
    torch.set_num_threads(args.torch_threads)
    options = parse_overrides([f"env_options.{pair}" for pair in args.env_option]).get("env_options", {})
    cfg = VAETraining(env=args.env, steps=args.steps, seed=args.seed, latent_dim=args.latent_dim,
                      hidden=tuple(args.hidden), torso=args.torso, gamma=args.gamma, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, beta=args.beta, value_weight=args.value_weight,
                      env_options=options)

    def log(epoch: int, terms: dict[str, float]) -> None:
        print(f"epoch {epoch + 1}/{cfg.epochs}: " + "  ".join(f"{k} {v:.4g}" for k, v in terms.items()), flush=True)

    pretrain_vae(cfg, args.out, log)
    print(f"VAE saved: {args.out}  (use: --set encoder=vae --set vae_path={args.out})")
    return 0
