"""Benchmark of the secure aggregation layer against a plain numpy sum and TenSEAL BFV, repeated over runs.

The whole measurement runs `--runs` times in this process, each run from fresh keys and data.
Within a run every timing is the best of `--repeats` calls (other load on the machine only ever
adds time), and the calls that are compared with each other alternate call by call (TensorGuard
and TenSEAL encryption; the aggregator's work and the plain sum), so both sides of a ratio see the
same machine state. Ratios are taken within each run; the table gives the median over the runs
and the min and max. Everything runs on one core (numpy here is single-threaded; TenSEAL is given
one thread).

Robot side, as `update_codec.encrypt_update` after the Skellam encoding: lattice encryption
(`RoundEncryptor.encrypt`), packing, and the hybrid seal of the packed body to the aggregator's
round transport key. Aggregator side, as `rounds.py`: per update one hybrid open, parse and
`BodySum.add`. The plain-sum baseline is the faster of np.sum over a (K, d) int64 matrix and
in-place accumulation of K int64 vectors. TenSEAL encrypts the same b-bit integers with BFV at
N=4096 (its default 109-bit coefficient modulus, a batching plaintext prime above 2^b), symmetric
and public-key, 4096 values per ciphertext; its inputs are converted to Python lists before timing.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import hybrid
from .params import SecAggParams, standard_params
from .ring import is_prime
from .secagg import (
    BodyCiphertext,
    KeyService,
    KeyServicePublicKey,
    RoundEncryptor,
    generate_key_service_keys,
    sum_bodies,
)
from .skellam import SkellamConfig
from .update_codec import BodySum, RoundCodec, body_seal_context

TENSEAL_N = 4096
PACKAGES = ('numpy', 'tenseal', 'cryptography')
_CONFIG_DIGEST = bytes(32)  # stands in for the round config digest in the seal context

# (key in the JSON report, table label, kind); labels are formatted with clients and sum_dim
METRICS: tuple[tuple[str, str, str], ...] = (
    ('robot_values_per_s', 'robot: lattice encryption + hybrid seal, values/s', 'rate'),
    ('lattice_values_per_s', '  lattice encryption alone, values/s', 'rate'),
    ('seal_values_per_s', '  hybrid seal of the packed body alone, values/s', 'rate'),
    ('tenseal_symmetric_values_per_s', 'TenSEAL BFV N=4096 symmetric, values/s', 'rate'),
    ('tenseal_public_values_per_s', 'TenSEAL BFV N=4096 public key, values/s', 'rate'),
    ('ratio_robot_vs_tenseal_symmetric', 'ratio robot (lattice + seal) / TenSEAL symmetric', 'ratio'),
    ('ratio_robot_vs_tenseal_public', 'ratio robot (lattice + seal) / TenSEAL public key', 'ratio'),
    ('ratio_lattice_vs_tenseal_symmetric', 'ratio lattice alone / TenSEAL symmetric', 'ratio'),
    ('robot_setup_ms', 'per-robot round setup (key + key ciphertext), ms', 'ms'),
    ('aggregate_ms', 'aggregator: open + parse + add {clients} sealed bodies x {sum_dim}, ms', 'ms'),
    ('open_ms', '  opening the {clients} seals alone, ms', 'ms'),
    ('parse_ms', '  parsing the {clients} opened bodies alone, ms', 'ms'),
    ('sum_ms', '  sum_bodies of the {clients} parsed bodies in one pass, ms', 'ms'),
    ('plain_sum_ms', 'plain numpy int64 sum, same shape (best of 2 ways), ms', 'ms'),
    ('ratio_aggregate_vs_plain', 'ratio aggregator (open + parse + add) / plain sum', 'ratio'),
    ('ratio_sum_vs_plain', 'ratio sum_bodies / plain sum', 'ratio'),
    ('key_sum_ms', 'key service: decrypt sum of {clients} key ciphertexts, ms', 'ms'),
    ('decrypt_values_per_s', 'key service: decryption of summed bodies, values/s', 'rate'),
)
_FORMATS = {'rate': '{:,.0f}', 'ratio': '{:.2f}x', 'ms': '{:.2f}'}


def interleaved_times(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times in seconds of `repeats` rounds that each call every entry once, in order."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


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


def tenseal_encryptions(values: np.ndarray, bits: int) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """TenSEAL BFV calls encrypting `values` (symmetric, public key) and their serialized bytes per value."""
    import tenseal as ts

    chunks = [values[i:i + TENSEAL_N].tolist() for i in range(0, values.size, TENSEAL_N)]
    plain_modulus = batching_prime_above(bits, TENSEAL_N)
    calls: dict[str, Callable[[], object]] = {}
    sizes: dict[str, float] = {}
    for name, kind in (('symmetric', ts.ENCRYPTION_TYPE.SYMMETRIC), ('public', ts.ENCRYPTION_TYPE.ASYMMETRIC)):
        context = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=TENSEAL_N, plain_modulus=plain_modulus,
                             encryption_type=kind, n_threads=1)
        calls[f'tenseal_{name}'] = lambda context=context: [ts.bfv_vector(context, chunk) for chunk in chunks]
        sizes[name] = len(ts.bfv_vector(context, chunks[0]).serialize()) / len(chunks[0])
    return calls, sizes


def measure_run(params: SecAggParams, dim: int, sum_dim: int, repeats: int) -> dict[str, Any]:
    """One independent run from fresh keys and data: every repeat's time and TenSEAL's sizes."""
    clients, bits = params.max_clients, params.plaintext_bits
    secret, public = generate_key_service_keys(params)
    service = KeyService(secret)
    transport = hybrid.SealedBoxKey()
    seed = os.urandom(32)
    values = np.frombuffer(os.urandom(8 * dim), dtype='<u8') & np.uint64(params.plaintext_modulus - 1)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    load_before = os.getloadavg()

    labels = (str(i) for i in itertools.count())
    encryptor = RoundEncryptor(params, seed, public)
    context = body_seal_context('robot-0', 1, _CONFIG_DIGEST)
    packed = encryptor.encrypt(values, 'packed').to_bytes()
    tenseal_calls, tenseal_sizes = tenseal_encryptions(values, bits)
    times = interleaved_times({
        'lattice': lambda: encryptor.encrypt(values, next(labels)),
        'seal': lambda: hybrid.seal(transport.public_key, packed, context),
        'robot': lambda: hybrid.seal(transport.public_key, encryptor.encrypt(values, next(labels)).to_bytes(), context),
        **tenseal_calls}, repeats)
    # a fresh key-service key per setup, as every round now has one (no cached public element)
    round_keys = iter([generate_key_service_keys(params)[1].to_bytes() for _ in range(repeats)])
    times |= interleaved_times(
        {'setup': lambda: RoundEncryptor(params, seed, KeyServicePublicKey.from_bytes(next(round_keys), params))},
        repeats)

    robots = [RoundEncryptor(params, seed, public) for _ in range(clients)]
    sum_values = values[:sum_dim]
    contexts = [body_seal_context(f'robot-{i}', 1, _CONFIG_DIGEST) for i in range(clients)]
    sealed = [hybrid.seal(transport.public_key, robot.encrypt(sum_values).to_bytes(), robot_context)
              for robot, robot_context in zip(robots, contexts)]
    # BodySum reads only the lattice parameters and the vector length from the codec
    codec = RoundCodec(params, SkellamConfig(dim=sum_dim, clipping_norm=1.0, noise_multiplier=1.0,
                                             min_clients=params.min_clients, max_clients=clients, bits=bits,
                                             rotate=False), seed)

    def aggregate() -> BodySum:
        body_sum = BodySum(codec)
        for blob, robot_context in zip(sealed, contexts):
            body_sum.add(body_sum.parse(transport.open(blob, robot_context)))
        return body_sum

    opened = [transport.open(blob, robot_context) for blob, robot_context in zip(sealed, contexts)]
    bodies = [BodyCiphertext.from_bytes(body, params, sum_dim) for body in opened]
    plain = np.stack([body.values.reshape(-1)[:sum_dim] for body in bodies]).astype(np.int64)
    plain_rows = [row.copy() for row in plain]
    times |= interleaved_times({
        'aggregate': aggregate,
        'open': lambda: [transport.open(blob, robot_context) for blob, robot_context in zip(sealed, contexts)],
        'parse': lambda: [BodyCiphertext.from_bytes(body, params, sum_dim) for body in opened],
        'sum': lambda: sum_bodies(bodies),
        'plain_matrix': lambda: np.sum(plain, axis=0),
        'plain_rows': lambda: accumulate(plain_rows)}, repeats)

    key_cts = [robot.key_ciphertext() for robot in robots]
    full_sum = sum_bodies([robots[0].encrypt(values, 'decrypt'), robots[1].encrypt(values, 'decrypt')])
    pair_key = service.decrypt_key_sum(key_cts[:2])
    times |= interleaved_times({
        'key_sum': lambda: service.decrypt_key_sum(key_cts),
        'decrypt': lambda: service.decrypt_sum(full_sum, pair_key, seed, 'decrypt', dim)}, repeats)
    check = service.decrypt_sum(aggregate().total, service.decrypt_key_sum(key_cts), seed, '', sum_dim)
    expected = (sum_values * np.uint64(clients)) & np.uint64(params.plaintext_modulus - 1)
    if not np.array_equal(check, expected):
        raise RuntimeError('benchmark decryption mismatch')
    return {'started': started, 'load_average_before': load_before, 'load_average_after': os.getloadavg(),
            'times_s': times, 'tenseal_bytes_per_value': tenseal_sizes}


def run_metrics(run: dict[str, Any], dim: int) -> dict[str, float]:
    """The table's metrics for one run, from the best time of each measurement."""
    best = {name: min(times) for name, times in run['times_s'].items()}
    rate = {name: dim / best[name] for name in ('robot', 'lattice', 'seal', 'tenseal_symmetric', 'tenseal_public')}
    plain = min(best['plain_matrix'], best['plain_rows'])
    return {
        'robot_values_per_s': rate['robot'],
        'lattice_values_per_s': rate['lattice'],
        'seal_values_per_s': rate['seal'],
        'tenseal_symmetric_values_per_s': rate['tenseal_symmetric'],
        'tenseal_public_values_per_s': rate['tenseal_public'],
        'ratio_robot_vs_tenseal_symmetric': rate['robot'] / rate['tenseal_symmetric'],
        'ratio_robot_vs_tenseal_public': rate['robot'] / rate['tenseal_public'],
        'ratio_lattice_vs_tenseal_symmetric': rate['lattice'] / rate['tenseal_symmetric'],
        'robot_setup_ms': best['setup'] * 1e3,
        'aggregate_ms': best['aggregate'] * 1e3,
        'open_ms': best['open'] * 1e3,
        'parse_ms': best['parse'] * 1e3,
        'sum_ms': best['sum'] * 1e3,
        'plain_sum_ms': plain * 1e3,
        'ratio_aggregate_vs_plain': best['aggregate'] / plain,
        'ratio_sum_vs_plain': best['sum'] / plain,
        'key_sum_ms': best['key_sum'] * 1e3,
        'decrypt_values_per_s': dim / best['decrypt'],
    }


def spread(samples: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-run values."""
    return {'median': statistics.median(samples), 'min': min(samples), 'max': max(samples)}


def wire_sizes(params: SecAggParams, dim: int, runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Bytes on the wire per update and per value, sealed, against the b-bit plaintext and TenSEAL."""
    body = params.body_bytes(dim)
    sealed = body + hybrid.SEAL_OVERHEAD_BYTES
    plaintext = (dim * params.plaintext_bits + 7) // 8
    tenseal = {kind: statistics.median(run['tenseal_bytes_per_value'][kind] for run in runs)
               for kind in ('symmetric', 'public')}
    return {'values': dim, 'body_bytes': body, 'seal_overhead_bytes': hybrid.SEAL_OVERHEAD_BYTES,
            'sealed_update_bytes': sealed, 'plaintext_bytes': plaintext, 'bytes_per_value': sealed / dim,
            'expansion_vs_plaintext': sealed / plaintext, 'body_expansion_vs_plaintext': body / plaintext,
            'tenseal_symmetric_bytes_per_value': tenseal['symmetric'],
            'tenseal_public_bytes_per_value': tenseal['public'],
            'key_ciphertext_bytes': params.key_ciphertext_bytes}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where there is none)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def report(params: SecAggParams, dim: int, sum_dim: int, repeats: int, runs: list[dict[str, Any]],
           command: str) -> dict[str, Any]:
    """The JSON report: machine, date, command, package versions, sizes, summary and every raw run."""
    for run in runs:
        run['metrics'] = run_metrics(run, dim)
    return {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'command': command,
        'argv': sys.argv,
        'machine': {'platform': platform.platform(), 'cpu_model': cpu_model(), 'cores': os.cpu_count(),
                    'python': platform.python_version()},
        'packages': {name: importlib.metadata.version(name) for name in PACKAGES},
        'parameters': {'security_bits': params.security_bits, 'n': params.n, 'log2_q': params.coefficient_bits,
                       'plaintext_bits': params.plaintext_bits, 'max_clients': params.max_clients,
                       'dim': dim, 'sum_dim': sum_dim, 'runs': len(runs), 'repeats': repeats},
        'sizes': wire_sizes(params, dim, runs),
        'summary': {key: spread([run['metrics'][key] for run in runs]) for key, _, _ in METRICS},
        'runs': runs,
    }


def render(data: dict[str, Any]) -> str:
    """Header (machine, packages, load, command) and two markdown tables: timings over the runs, sizes."""
    p, sizes, machine = data['parameters'], data['sizes'], data['machine']
    loads = ', '.join(f"{run['load_average_before'][0]:.2f}" for run in data['runs'])
    header = [f"bench_secagg  {data['date']}  {p['runs']} runs, each timing the best of {p['repeats']} repeats",
              f"machine: {machine['platform']}  {machine['cpu_model']}  cores={machine['cores']}  "
              f"Python {machine['python']}",
              'packages: ' + ', '.join(f'{name} {version}' for name, version in data['packages'].items()),
              f'1-min load average at the start of each run: {loads}',
              f"command: {data['command']}", '']
    timing = [(label.format(clients=p['max_clients'], sum_dim=p['sum_dim']),
               *(_FORMATS[kind].format(data['summary'][key][stat]) for stat in ('median', 'min', 'max')))
              for key, label, kind in METRICS]
    width = max(len(row[0]) for row in timing)
    lines = [f"| {'metric'.ljust(width)} | median | min | max |", f"|{'-' * (width + 2)}|--------|-----|-----|"]
    lines += [f'| {name.ljust(width)} | {median} | {low} | {high} |' for name, median, low, high in timing]
    bits = p['plaintext_bits']
    size_rows = [
        ('parameter set', f"{p['security_bits']}-bit, n={p['n']}, log2 q={p['log2_q']}, b={bits}, "
                          f"max_clients={p['max_clients']}"),
        (f"sealed update of {p['dim']} values, bytes",
         f"{sizes['sealed_update_bytes']:,} = {sizes['body_bytes']:,} lattice body + "
         f"{sizes['seal_overhead_bytes']} seal (b-bit plaintext {sizes['plaintext_bytes']:,})"),
        ('wire bytes per value (b/8 plaintext)', f"{sizes['bytes_per_value']:.5f} ({bits / 8:.3f})"),
        ('wire expansion vs b-bit plaintext (lattice body alone)',
         f"{sizes['expansion_vs_plaintext']:.5f}x ({sizes['body_expansion_vs_plaintext']:.5f}x)"),
        ('TenSEAL serialized bytes per value (sym / pk)',
         f"{sizes['tenseal_symmetric_bytes_per_value']:.2f} / {sizes['tenseal_public_bytes_per_value']:.2f}"),
        ('key-layer bytes per robot per round', f"{sizes['key_ciphertext_bytes']:,}"),
    ]
    size_width = max(len(name) for name, _ in size_rows)
    lines += ['', f"| {'size'.ljust(size_width)} | value |", f"|{'-' * (size_width + 2)}|-------|"]
    lines += [f'| {name.ljust(size_width)} | {value} |' for name, value in size_rows]
    return '\n'.join(header + lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point `bench_secagg`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small sizes and 2 repeats for a smoke run')
    parser.add_argument('--security', type=int, default=128, choices=(128, 192, 256))
    parser.add_argument('--bits', type=int, default=20)
    parser.add_argument('--clients', type=int, default=1000)
    parser.add_argument('--dim', type=int, default=1 << 20, help='values per encryption/decryption')
    parser.add_argument('--sum-dim', type=int, default=1 << 15, help='values per body in the summing test')
    parser.add_argument('--repeats', type=int, default=5, help='calls per timing within a run (best is kept)')
    parser.add_argument('--runs', type=int, default=5, help='independent runs (median, min and max reported)')
    parser.add_argument('--json', type=Path, help='write the report with every raw run here')
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.dim, args.sum_dim, args.repeats = 20, 1 << 14, 1 << 12, 2
    if args.runs < 1 or args.repeats < 1:
        parser.error('--runs and --repeats must be at least 1')
    params = standard_params(args.security, plaintext_bits=args.bits, max_clients=args.clients)
    runs = [measure_run(params, args.dim, args.sum_dim, args.repeats) for _ in range(args.runs)]
    command = shlex.join(['bench_secagg', *(argv if argv is not None else sys.argv[1:])])
    data = report(params, args.dim, args.sum_dim, args.repeats, runs, command)
    print(render(data))
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=1) + '\n')
        print(f'report: {args.json}')


if __name__ == '__main__':
    main()
