"""The speed a user's plain script gets, against the lab's, side by side in fresh processes.

    python -m sparsebench.bench.plain [--rounds 5] [--threads 2] [--torch MODEL] [--out plain.csv]

A "plain" process is what a user writes: numpy imported before sparsebench, X and out allocated
with numpy, each spmm call right after a numpy matmul. A "lab" process imports sparsebench first
(so OpenBLAS's idle threads stop spinning at once), puts X on huge pages (sparsebench.empty)
and alternates with the same numpy matmul. Rounds alternate the two kinds of process; the
result per case is plain time / lab time, the median over rounds with its range. A peak probe
runs before and after each process; a round in which one ran degraded (this machine's cores or
memory busy with something else) is set aside and run again (if too few rounds are clean, all count).

--torch MODEL (bert-base, ...; needs torch and transformers) measures a forward pass of that
model in transformers after sparsebench.torch.sparsify (90% 4x1, batch 1, sequence 128), each
right after a dense torch matmul: "plain" imports torch and transformers first, as a user's
script does (PyTorch's OpenMP workers keep libgomp's default spinning); "lab" is how `sparsebench
bert --compare torch-sparsify` runs it (sparsebench first, PyTorch's idle spinning cut short).
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


_TORCH_WORKER = """
import sys, json, time
kind, threads = sys.argv[1], int(sys.argv[2])
if kind == "lab":
    from sparsebench.idle_spin import tame_torch_idle_spin
    tame_torch_idle_spin()
    import torch, transformers
else:
    import torch, transformers
import numpy as np
from sparsebench.models.bert import BertEncoder
from sparsebench.models.runner import make_inputs, named_inputs, torch_model
from sparsebench.torch import sparsify
enc = BertEncoder.random({model!r}, sparsity={sparsity}, block=(4, 1))
model = torch_model(enc)
torch.set_num_threads(threads)
sparsify(model, block=(4, 1), min_sparsity=0.0, threads=threads)
feeds = {{k: torch.from_numpy(v) for k, v in named_inputs(make_inputs(enc.config, 1, {n})).items()}}
a = torch.randn(768, 768)
times = []
with torch.inference_mode():
    for i in range({calls}):
        a @ a                                    # the user's torch work between forward passes
        t0 = time.perf_counter()
        model(**feeds)
        times.append(time.perf_counter() - t0)
times = sorted(times[{calls} // 5:])
print(json.dumps({{"sparsify {model} b1 seq{n}": times[len(times) // 2]}}))
"""
TORCH_CALLS = 40
#: degraded rounds measured again: at most `rounds` * RETRIES more rounds in all
RETRIES = 2


def run_process(kind, threads, torch_model=None):
    """Seconds per call of each case in one fresh `kind` ("plain" or "lab") process: spmm, or a
    forward pass of `torch_model` after sparsify."""
    if torch_model:
        code = _TORCH_WORKER.format(model=torch_model, n=N, sparsity=SPARSITY, calls=TORCH_CALLS)
    else:
        code = _WORKER.format(n=N, cases=CASES, sparsity=SPARSITY, calls=CALLS)
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    done = subprocess.run([sys.executable, "-c", code, kind, str(threads)], capture_output=True,
                          text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{kind} process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(rounds=5, threads=2, log=print, torch_model=None, monitor=None, run=run_process):
    """Rows per case: lab and plain medians (us) and plain/lab over `rounds` rounds (a lab and
    a plain process each, in alternating order). A peak probe (PeakMonitor) runs before and
    after each process: a round in which one of them ran degraded (the cores or the memory busy
    with something else) is run again, up to `rounds` * RETRIES more rounds in all. The ratios
    come from the clean rounds if at least half the rounds asked for are clean; otherwise from
    every round, degraded ones too (`clean` False: one or two clean rounds are no statistic).
    run(kind, threads, torch_model): one process's seconds per call of each case."""
    if monitor is None:
        from ..peak import PeakMonitor
        monitor = PeakMonitor(threads)
    clean, degraded = [], []
    while len(clean) < rounds and len(clean) + len(degraded) < rounds * (1 + RETRIES):
        attempt = len(clean) + len(degraded) + 1
        result, slow = {}, False
        # each kind runs first as often among the clean rounds, and, while they are even, round
        # by round (so degraded rounds alternate too: they count if too few are clean)
        lab_first = sum(r["first"] == "lab" for r in clean)
        lab_leads = lab_first < len(clean) - lab_first or (2 * lab_first == len(clean) and attempt % 2)
        result["first"] = "lab" if lab_leads else "plain"
        for kind in (("lab", "plain") if lab_leads else ("plain", "lab")):
            result[kind], was_slow = monitor.around(f"{kind} process, round {attempt}",
                                                    lambda: run(kind, threads, torch_model))
            slow = slow or was_slow
        (degraded if slow else clean).append(result)
        log(f"round {attempt}: " + ("degraded (a peak probe ran slow), measured again" if slow
                                    else f"{len(clean)}/{rounds} clean"))
    used = clean if 2 * len(clean) >= rounds else clean + degraded
    rows = []
    for case in used[0]["lab"]:
        ratios = sorted(r["plain"][case] / r["lab"][case] for r in used)
        lab = sorted(r["lab"][case] for r in used)
        plain = sorted(r["plain"][case] for r in used)
        rows.append({"case": case, "threads": threads, "lab_us": lab[len(lab) // 2] * 1e6,
                     "plain_us": plain[len(plain) // 2] * 1e6,
                     "plain_over_lab": ratios[len(ratios) // 2], "low": ratios[0], "high": ratios[-1],
                     "rounds": len(used), "degraded_rounds": len(degraded), "clean": used is clean})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sparsebench.bench.plain", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--torch", default=None, metavar="MODEL",
                   help="a transformers model (bert-base, ...) after sparsebench.torch.sparsify instead of spmm")
    p.add_argument("--out", default=None, help="CSV file for the rows")
    args = p.parse_args(argv)
    if args.torch:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            print(f"--torch needs {e.name}: pip install \"sparsebench[torch]\" transformers", file=sys.stderr)
            return 2
    rows = compare(args.rounds, args.threads, torch_model=args.torch)
    r0 = rows[0]
    print(f"{r0['rounds']} clean rounds; {r0['degraded_rounds']} degraded round(s) set aside" if r0["clean"] else
          f"{r0['degraded_rounds']} of {r0['rounds']} rounds degraded (a peak probe ran slow around them), "
          f"too few clean: the figures are from all {r0['rounds']}")
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
