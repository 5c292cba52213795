"""Print the privacy a fleet configuration buys: epsilon per robot after R rounds.

    ros2 run tensorguard_crypto privacy_table --dim 30000 --rounds 5

For each noise multiplier and minimum client count it composes the Skellam RDP bound of
`accountant.round_rdp` over the rounds (the same code the robots' hard stop uses) and reports
epsilon at the given delta, next to the per-coordinate noise std of the decoded mean over
`min_clients` robots, so the privacy / utility trade-off of a configuration can be read before a
fleet is deployed: epsilon depends on the noise multiplier alone, the noise on the mean shrinks
with the number of robots summed. With ``--epsilon E`` it prints, instead of the given multipliers,
the smallest one (to 0.01) whose rounds stay within E for each robot count: the least noise a
budget allows.
"""
from __future__ import annotations

import argparse
import sys

from tensorguard_crypto.accountant import AccountantError, DPProfile, epsilon_after_rounds, smallest_noise_multiplier
from tensorguard_crypto.skellam import DPError


def table(dim: int, rounds: int, clipping_norm: float, max_clients: int, delta: float,
          noise_multipliers: list[float], min_clients: list[int]) -> list[dict]:
    """One row per (noise multiplier, min_clients): epsilon after one round and after `rounds`."""
    rows = []
    for multiplier in noise_multipliers:
        for clients in min_clients:
            profile = DPProfile(clipping_norm=clipping_norm, noise_multiplier=multiplier, min_clients=clients)
            config = profile.skellam_config(dim, max(max_clients, clients))
            rows.append({'noise_multiplier': multiplier, 'min_clients': clients,
                         'epsilon_1': epsilon_after_rounds(config, 1, delta),
                         'epsilon_R': epsilon_after_rounds(config, rounds, delta),
                         'mean_noise_std': config.aggregate_stddev(clients) / clients})
    return rows


def budget_table(dim: int, rounds: int, clipping_norm: float, max_clients: int, delta: float, epsilon: float,
                 min_clients: list[int]) -> list[dict]:
    """One row per min_clients at the smallest noise multiplier (to 0.01) whose `rounds` rounds spend
    at most `epsilon`."""
    rows = []
    for clients in min_clients:
        profile = DPProfile(clipping_norm=clipping_norm, min_clients=clients)
        multiplier = smallest_noise_multiplier(profile, dim, max(max_clients, clients), rounds, epsilon, delta)
        rows += table(dim, rounds, clipping_norm, max_clients, delta, [multiplier], [clients])
    return rows


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog='privacy_table', description=__doc__.splitlines()[0])
    parser.add_argument('--dim', type=int, default=30_000, help='length of the update vector')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--clipping-norm', type=float, default=2.0)
    parser.add_argument('--max-clients', type=int, default=16)
    parser.add_argument('--delta', type=float, default=1e-5)
    parser.add_argument('--noise-multipliers', type=float, nargs='+', default=[0.002, 0.1, 1.0, 2.0])
    parser.add_argument('--min-clients', type=int, nargs='+', default=[4, 100, 1000])
    parser.add_argument('--epsilon', type=float,
                        help='a budget: print the smallest multiplier per robot count that keeps the rounds within it')
    args = parser.parse_args(argv)
    try:
        if args.epsilon is None:
            rows = table(args.dim, args.rounds, args.clipping_norm, args.max_clients, args.delta,
                         args.noise_multipliers, args.min_clients)
        else:
            rows = budget_table(args.dim, args.rounds, args.clipping_norm, args.max_clients, args.delta,
                                args.epsilon, args.min_clients)
    except (AccountantError, DPError) as exc:
        parser.error(str(exc))
    budget = '' if args.epsilon is None else f', smallest multiplier with epsilon <= {args.epsilon:g}'
    print(f'dim={args.dim}, C={args.clipping_norm}, delta={args.delta}, rounds={args.rounds}{budget}')
    print(f"{'noise mult.':>11} {'min robots':>10} {'eps, 1 round':>13} {f'eps, {args.rounds} rounds':>14} "
          f"{'noise std of mean':>18}")
    for row in rows:
        print(f"{row['noise_multiplier']:>11g} {row['min_clients']:>10} {row['epsilon_1']:>13.4g} "
              f"{row['epsilon_R']:>14.4g} {row['mean_noise_std']:>18.4g}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
