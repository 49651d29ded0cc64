"""The speed a user's plain script gets, against the lab's, side by side in fresh processes.

    python -m sparsebench.bench.plain [--rounds 5] [--threads 2] [--out plain.csv]

A "plain" process is what a user writes: numpy imported before sparsebench, X and out allocated
with numpy, each spmm call right after a numpy matmul. A "lab" process imports sparsebench first
(so OpenBLAS's idle threads stop spinning at once), puts X on huge pages (sparsebench.empty)
and alternates with the same numpy matmul. Rounds alternate the two kinds of process; the
result per case is plain time / lab time, the median over rounds with its range.
"""
import argparse
import csv
import json
import os
import subprocess
import sys

#: (block, M, K) at 90% sparsity, N = 128 tokens
CASES = [((1, 1), 768, 768), ((1, 1), 1024, 1024), ((1, 1), 768, 3072),
         ((4, 1), 768, 768), ((4, 1), 1024, 1024), ((4, 1), 768, 3072)]
N, SPARSITY, CALLS = 128, 0.9, 300

_WORKER = """
import sys, json, time
kind, threads = sys.argv[1], int(sys.argv[2])
if kind == "lab":
    import sparsebench as sb
    import numpy as np
else:
    import numpy as np
    import sparsebench as sb
rng = np.random.default_rng(0)
Wd = rng.standard_normal((768, 768), dtype=np.float32)
Xd = rng.standard_normal((768, {n}), dtype=np.float32)
out = {{}}
for (br, bc), M, K in {cases}:
    W = sb.prune(rng.standard_normal((M, K), dtype=np.float32), {sparsity}, (br, bc))
    A = sb.BSRMatrix.from_dense(W, (br, bc))
    X = sb.empty((K, {n})) if kind == "lab" else np.empty((K, {n}), np.float32)
    X[...] = rng.standard_normal((K, {n}), dtype=np.float32)
    Y = np.empty((M, {n}), np.float32)
    cfg = sb.default_config(A, {n}, threads)
    times = []
    for i in range({calls}):
        Wd @ Xd                                  # the user's numpy work between our calls
        t0 = time.perf_counter()
        sb.spmm(A, X, cfg, out=Y)
        times.append(time.perf_counter() - t0)
    times = sorted(times[{calls} // 5:])
    out[f"{{br}}x{{bc}} {{M}}x{{K}}x{n}"] = times[len(times) // 2]
print(json.dumps(out))
"""


def run_process(kind, threads):
    """Seconds per spmm call of each case in one fresh `kind` ("plain" or "lab") process."""
    code = _WORKER.format(n=N, cases=CASES, sparsity=SPARSITY, calls=CALLS)
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    done = subprocess.run([sys.executable, "-c", code, kind, str(threads)], capture_output=True,
                          text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{kind} process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(rounds=5, threads=2, log=print):
    """Rows per case: lab and plain medians (us) and plain/lab over the rounds."""
    runs = {"lab": [], "plain": []}
    for r in range(rounds):
        for kind in (("lab", "plain") if r % 2 == 0 else ("plain", "lab")):
            runs[kind].append(run_process(kind, threads))
        log(f"round {r + 1}/{rounds} done")
    rows = []
    for case in runs["lab"][0]:
        ratios = sorted(p[case] / lab[case] for p, lab in zip(runs["plain"], runs["lab"]))
        lab = sorted(x[case] for x in runs["lab"])
        plain = sorted(x[case] for x in runs["plain"])
        rows.append({"case": case, "threads": threads, "lab_us": lab[len(lab) // 2] * 1e6,
                     "plain_us": plain[len(plain) // 2] * 1e6,
                     "plain_over_lab": ratios[len(ratios) // 2], "low": ratios[0], "high": ratios[-1],
                     "rounds": rounds})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sparsebench.bench.plain", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="CSV file for the rows")
    args = p.parse_args(argv)
    rows = compare(args.rounds, args.threads)
    print(f"{'case':<24} {'lab us':>8} {'plain us':>9} {'plain/lab':>10}  [range]")
    for r in rows:
        print(f"{r['case']:<24} {r['lab_us']:8.1f} {r['plain_us']:9.1f} {r['plain_over_lab']:10.2f}  "
              f"[{r['low']:.2f}-{r['high']:.2f}]")
    if args.out:
        from ..store import atomic_file
        with atomic_file(args.out) as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
