"""Benchmark of the secure aggregation layer against a plain numpy sum and TenSEAL BFV, one table per run.

Every figure is measured in this process on one core (numpy here is single-threaded; TenSEAL
is given one thread): each timing is the best of `--repeats` runs. The plain-sum baseline is
the faster of np.sum over a (K, d) int64 matrix and in-place accumulation of K int64 vectors. TenSEAL encrypts the same
b-bit integers with BFV at N=4096 (its default 109-bit coefficient modulus, a batching plaintext
prime above 2^b), symmetric and public-key, 4096 values per ciphertext; its inputs are converted
to Python lists before timing.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from typing import Callable, Sequence

import numpy as np

from .params import standard_params
from .ring import is_prime
from .secagg import KeyService, RoundEncryptor, generate_key_service_keys, sum_bodies

TENSEAL_N = 4096


def best_time(run: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of `repeats` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def accumulate(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Plain in-place integer accumulation of separate vectors (a baseline)."""
    total = np.zeros_like(rows[0])
    for row in rows:
        total += row
    return total


def batching_prime_above(bits: int, n: int) -> int:
    """Smallest prime p > 2^bits with p = 1 mod 2n (a BFV batching plaintext modulus)."""
    k = (1 << bits) // (2 * n) + 1
    while not is_prime(k * 2 * n + 1):
        k += 1
    return k * 2 * n + 1


def tenseal_rates(values: np.ndarray, bits: int, repeats: int) -> dict[str, float]:
    """TenSEAL BFV encryption values/s (symmetric, public key) and serialized bytes per value."""
    import tenseal as ts

    chunks = [values[i:i + TENSEAL_N].tolist() for i in range(0, values.size, TENSEAL_N)]
    plain_modulus = batching_prime_above(bits, TENSEAL_N)
    rates: dict[str, float] = {}
    for name, kind in (("symmetric", ts.ENCRYPTION_TYPE.SYMMETRIC), ("public", ts.ENCRYPTION_TYPE.ASYMMETRIC)):
        context = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=TENSEAL_N, plain_modulus=plain_modulus,
                             encryption_type=kind, n_threads=1)
        elapsed = best_time(lambda: [ts.bfv_vector(context, chunk) for chunk in chunks], repeats)
        rates[name] = values.size / elapsed
        rates[f"{name}_bytes"] = len(ts.bfv_vector(context, chunks[0]).serialize()) / len(chunks[0])
    return rates


def run(security: int, bits: int, clients: int, dim: int, sum_dim: int, repeats: int) -> list[tuple[str, str]]:
    """Measure everything once and return (metric, value) rows."""
    params = standard_params(security, plaintext_bits=bits, max_clients=clients)
    secret, public = generate_key_service_keys(params)
    service = KeyService(secret)
    seed = os.urandom(32)
    values = np.frombuffer(os.urandom(8 * dim), dtype="<u8") & np.uint64(params.plaintext_modulus - 1)

    labels = iter(range(10**9))
    encryptor = RoundEncryptor(params, seed, public)
    encrypt_s = best_time(lambda: encryptor.encrypt(values, str(next(labels))), repeats)
    setup_s = best_time(lambda: RoundEncryptor(params, seed, public), repeats)

    robots = [RoundEncryptor(params, seed, public) for _ in range(clients)]
    sum_values = values[:sum_dim]
    bodies = [robot.encrypt(sum_values) for robot in robots]
    plain = np.stack([body.values.reshape(-1)[:sum_dim] for body in bodies]).astype(np.int64)
    plain_rows = [row.copy() for row in plain]
    sum_s = best_time(lambda: sum_bodies(bodies), repeats)
    plain_sum_s = min(best_time(lambda: np.sum(plain, axis=0), repeats),
                      best_time(lambda: accumulate(plain_rows), repeats))

    key_cts = [robot.key_ciphertext() for robot in robots]
    key_sum_s = best_time(lambda: service.decrypt_key_sum(key_cts), repeats)
    summed_key = service.decrypt_key_sum(key_cts)
    full_sum = sum_bodies([robots[0].encrypt(values, "decrypt"), robots[1].encrypt(values, "decrypt")])
    pair_key = service.decrypt_key_sum(key_cts[:2])
    decrypt_s = best_time(lambda: service.decrypt_sum(full_sum, pair_key, seed, "decrypt", dim), repeats)
    check = service.decrypt_sum(sum_bodies(bodies), summed_key, seed, "", sum_dim)
    expected = (sum_values * np.uint64(clients)) & np.uint64(params.plaintext_modulus - 1)
    if not np.array_equal(check, expected):
        raise RuntimeError("benchmark decryption mismatch")

    seal = tenseal_rates(values, bits, repeats)
    ours = dim / encrypt_s
    wire = params.body_bytes(dim) / dim
    return [
        ("parameter set", f"{security}-bit, n={params.n}, log2 q={params.coefficient_bits}, b={bits}, "
                          f"max_clients={clients}"),
        ("encryption, values/s (1 core)", f"{ours:,.0f}"),
        ("TenSEAL BFV N=4096 symmetric, values/s", f"{seal['symmetric']:,.0f}"),
        ("TenSEAL BFV N=4096 public key, values/s", f"{seal['public']:,.0f}"),
        ("ratio vs TenSEAL symmetric / public key", f"{ours / seal['symmetric']:.2f}x / {ours / seal['public']:.2f}x"),
        ("per-robot round setup (key + key ciphertext), ms", f"{setup_s * 1e3:.2f}"),
        (f"sum of {clients} bodies x {sum_dim} values, ms", f"{sum_s * 1e3:.2f}"),
        ("plain numpy int64 sum, same shape (best of 2 ways), ms", f"{plain_sum_s * 1e3:.2f}"),
        ("sum time ratio (bodies / plain)", f"{sum_s / plain_sum_s:.2f}x"),
        (f"key service: decrypt sum of {clients} key ciphertexts, ms", f"{key_sum_s * 1e3:.2f}"),
        ("decryption of summed bodies, values/s", f"{dim / decrypt_s:,.0f}"),
        ("wire bytes per coordinate (b/8 plaintext)", f"{wire:.3f} ({bits / 8:.3f})"),
        ("wire expansion vs b-bit plaintext", f"{wire * 8 / bits:.3f}x"),
        ("TenSEAL serialized bytes per coordinate (sym / pk)",
         f"{seal['symmetric_bytes']:.2f} / {seal['public_bytes']:.2f}"),
        ("key-layer bytes per robot per round", f"{params.key_ciphertext_bytes:,}"),
    ]


def render(rows: Sequence[tuple[str, str]], command: str) -> str:
    """One markdown table with the machine, date and command."""
    header = (f"bench_secagg  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  "
              f"{platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}  "
              f"Python {platform.python_version()}  numpy {np.__version__}\ncommand: {command}\n")
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return header + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point `bench_secagg`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--security", type=int, default=128, choices=(128, 192, 256))
    parser.add_argument("--bits", type=int, default=20)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=1 << 20, help="values per encryption/decryption")
    parser.add_argument("--sum-dim", type=int, default=1 << 15, help="values per body in the summing test")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.dim, args.sum_dim, args.repeats = 20, 1 << 14, 1 << 12, 2
    rows = run(args.security, args.bits, args.clients, args.dim, args.sum_dim, args.repeats)
    command = "bench_secagg " + " ".join(argv if argv is not None else sys.argv[1:])
    print(render(rows, command.strip()))


if __name__ == "__main__":
    main()
