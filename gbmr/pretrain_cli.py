"""`gbmr pretrain-vae` and `gbmr pretrain-inverse`: the argparse wiring the main CLI mounts, and the command
(in experiment/pretraining.py). Both collect data with a policy that needs no agent and train a frozen encoder."""

from __future__ import annotations

import argparse

DESCRIPTIONS = {
    "vae": ("train the VAE encoder (seed 001) on policy-free data, for --set encoder=vae --set encoder_path=FILE",
            "Collect STEPS observations of ENV with their Monte-Carlo returns, train a VAE (reconstruction + KL + "
            "value decoding) on them, and save it to FILE."),
    "inverse": ("train the inverse-dynamics encoder (keys of what the agent controls), for --set encoder=inverse "
                "--set encoder_path=FILE",
                "Collect STEPS transitions of ENV, train an embedding with a classifier that tells the action "
                "from the embeddings of a state and its successor (what the actions do not change drops out), "
                "and save it to FILE."),
}
DEFAULTS = {"vae": {"latent": 32, "hidden": [256], "policy": "random", "epochs": 10},
            # inverse, MinAtar Freeway (50k steps): 5 epochs kept adjacent lanes apart better than 10
            "inverse": {"latent": 16, "hidden": [128], "policy": "ez", "epochs": 5}}


def add_pretrain_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `pretrain-vae` and `pretrain-inverse` on the main CLI's subparsers."""
    for kind, (help_text, description) in DESCRIPTIONS.items():
        default = DEFAULTS[kind]
        parser = subparsers.add_parser(
            f"pretrain-{kind}", help=help_text,
            description=f"{description} The file is written atomically and loads with torch.load(weights_only="
            f"True). Then: gbmr train --algo gbmr-sweep --env ENV --set encoder={kind} --set encoder_path=FILE "
            "(also gq, gbmr, gcmr, nec, mfec).")
        parser.add_argument("--env", required=True, help="environment id (see `gbmr list`)")
        parser.add_argument("--steps", type=int, default=50_000, help="environment steps of data (default 50000)")
        parser.add_argument("--out", required=True, metavar="FILE", help=f"where to save it (e.g. {kind}.pt)")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--policy", default=default["policy"],
                            help="data policy: random (uniform each step) | ez (uniform actions held for "
                            f"zeta(2)-distributed durations, ez-greedy's; default {default['policy']})")
        parser.add_argument("--epochs", type=int, default=default["epochs"],
                            help=f"passes over the data (default {default['epochs']})")
        parser.add_argument("--batch-size", type=int, default=128)
        parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
        parser.add_argument("--latent-dim", type=int, default=default["latent"],
                            help=f"size of the embedding = of the keys (default {default['latent']})")
        parser.add_argument("--hidden", type=int, nargs="+", default=default["hidden"],
                            help="MLP layers, or the fully connected layer after a CNN "
                            f"(default {' '.join(map(str, default['hidden']))})")
        parser.add_argument("--torso", default="auto", help="auto | mlp | nature_cnn | minatar_cnn")
        if kind == "vae":
            parser.add_argument("--gamma", type=float, default=0.99, help="discount of the value targets")
            parser.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
            parser.add_argument("--value-weight", type=float, default=1.0, help="weight of the value-decoding term")
        parser.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                            help="environment option, as a run's env_options (must match the runs that use it)")
        parser.add_argument("--torch-threads", type=int, default=1)
        parser.set_defaults(func=run_pretrain, kind=kind)


def run_pretrain(args: argparse.Namespace) -> int:
    """Train and save; user errors raise GbmrError (exit 2)."""
    import torch  # heavy imports only when the command runs

    from gbmr.config import parse_overrides
    from gbmr.core.errors import GbmrError
    from gbmr.experiment.pretraining import Pretraining, pretrain

    if args.torch_threads < 1:
        raise GbmrError(f"--torch-threads must be at least 1, got {args.torch_threads}")
    torch.set_num_threads(args.torch_threads)
    options = parse_overrides([f"env_options.{pair}" for pair in args.env_option]).get("env_options", {})
    vae_terms = ({"gamma": args.gamma, "beta": args.beta, "value_weight": args.value_weight}
                 if args.kind == "vae" else {})
    cfg = Pretraining(env=args.env, kind=args.kind, steps=args.steps, seed=args.seed, policy=args.policy,
                      latent_dim=args.latent_dim, hidden=tuple(args.hidden), torso=args.torso, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, env_options=options, **vae_terms)

    def log(epoch: int, terms: dict[str, float]) -> None:
        print(f"epoch {epoch + 1}/{cfg.epochs}: " + "  ".join(f"{k} {v:.4g}" for k, v in terms.items()), flush=True)

    pretrain(cfg, args.out, log)
    print(f"{args.kind} encoder saved: {args.out}  (use: --set encoder={args.kind} --set encoder_path={args.out})")
    return 0
