"""jmp-ase against the original JMP code (facebookresearch/JMP) on the same weights and structures.

    python benchmarks/vs_original.py --original /path/to/JMP/src --original-python /path/to/venv/bin/python \\
        --threads 1 --cases aspirin,cu108,cu256,cu1000 --repeats 3 --memory-limit-gb 12

The original is not part of jmp-ase and is never imported by it: ``--original`` is the ``src``
directory of a checkout of facebookresearch/JMP (the folder holding ``jmp/``), run by ``original_jmp.py`` with
``--original-python``, a Python that has its dependencies (torch-geometric, torch-scatter,
torch-sparse, ...; see benchmarks/README.md). A few shims are applied in that child process only,
never to files: ``np.math = math`` (the code predates NumPy 2), a bare ``jmp.lightning`` package
(so the GemNet-OC modules import without the Lightning training stack), and
``jmp.utils.goc_graph.radius_graph`` (torch-cluster, used for non-periodic structures) replaced
by an exact all-pairs radius graph (row 0 = source j, row 1 = target i, sorted by target).
Where torch-sparse is not installed (its compile took over 40 minutes on a loaded 2-core machine),
its ``SparseTensor`` is replaced by a pure-torch stand-in (``_SparseTensorStandIn``: construction,
row selection, ``set_value_``, COO access); only the original's triplet / quadruplet index
construction uses it (its "idx ms" column), and the table says which was used.

Weights: one JMP-S-shaped checkpoint (embedding, GemNet-OC backbone, one pre-training energy head
and one direct-force head), drawn once with ``--seed`` by jmp-ase's initialisers, its 54
``scale_factor`` buffers set to random values in [0.5, 1) (0 would mean "unfitted"), saved as a bare
state dict in JMP's key layout in ``--workdir``. jmp-ase reads it with
``JMPCalculator.from_jmp_checkpoint`` (head 0, ``forces="direct"`` or ``"conservative"``); the
original loads its ``backbone.*`` keys into ``GemNetOCBackbone(BackboneConfig.base())`` (JMP-S) and
the heads into the same ``Linear -> ScaledSiLU -> Linear`` MLPs as JMP's pre-training heads.
While a model is built, ``torch.nn.init.orthogonal_`` is a no-op in both codes (every weight is
then loaded, strictly): that saves 15-150 s of random initialisation per case.

Systems: ``aspirin`` (21 atoms, no cell: the original gets a 1000 A box, as JMP does), ``cu108``,
``cu256`` (fcc Cu, the 4-atom cubic cell repeated 3x3x3 and 4x4x4) and ``cu1000`` (5x5x10 cubic
cells, 18.1 x 18.1 x 36.1 A: the only orthogonal 1000-atom repeat of the cubic cell with two
equal sides; every Cu atom has the same neighbourhood in all three cells), positions rattled
(normal, sigma 0.02 A, seed 0). Cutoff 12 A, max_neighbors 30 (JMP's a2a / a2ee2a / qint limits 1000
/ 20 / 8, all tags 2, as JMP fine-tunes), float32.

Modes: ``direct`` = energy head + direct-force head under ``torch.no_grad()``; ``conservative``
= the same energy head, forces = -dE/dr by autograd (no stress).

What is timed, per call (both codes the same way): each repeat builds the graphs from the
structure ("graph ms") and then calls the model ("model ms"); the tables give medians over
``--repeats`` repeats after ``--warmup`` untimed ones (a repeat slower than ``--budget`` s ends the
series: "n" is the number of timed repeats).

* jmp-ase: graph = ``batch_from_atoms`` (the four radius graphs and the triplet / quadruplet
  interaction indices, as ``JMPCalculator`` builds them, no index cache); model = the
  calculator's predictor on that batch (edge geometry from positions, backbone, heads, and for
  conservative the backward pass).
* original: graph = the torch-geometric ``Batch`` and ``goc_graph.generate_graph`` at the a2a
  settings, ``subselect_graph`` to main / a2ee2a / qint and ``tag_mask`` (as JMP's fine-tuning
  does; this includes the edge distances and vectors, with ``pos.requires_grad`` for conservative);
  model = atom embedding, ``GemNetOCBackbone.forward`` (which starts by symmetrising the main graph
  and building the triplet / quadruplet indices: "of which idx ms"), the heads, and the
  backward pass for conservative.

So the interaction indices are graph time for jmp-ase and model time for the original: compare
"total ms" (graph + model, what one energy + forces evaluation of a new structure costs); the
ratios are given for total and for model time.

Each (code, system, mode) runs in a fresh subprocess with ``--threads`` torch / OpenMP threads,
an address-space cap (``--memory-limit-gb``: a case that does not fit ends with an allocation
error, reported as "does not fit", instead of exhausting the machine) and a wall-clock limit
(``--timeout``). "peak RSS" is the child's ``ru_maxrss`` (interpreter, model, graphs, passes).
jmp-ase's memory mode (``--memory``, default ``auto``: lean above 10^6 padded quadruplet slots or
where fast would not fit in the available memory) is reported per case as fast / lean. Once a
(code, mode) does not fit or times out, its larger systems are skipped. Energies and forces
of the two codes are compared per (system, mode): max |difference| and that over max |value|.
The last lines give the geometric mean of original / jmp-ase time over aspirin, cu108 and cu256
x direct / conservative (the pairs where both ran).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from original_jmp import CUTOFF, MAX_NEIGHBORS, NoOrthogonalInit, rss_mb, time_repeats  # noqa: E402
SYSTEMS = {"aspirin": None, "cu108": (3, 3, 3), "cu256": (4, 4, 4), "cu1000": (5, 5, 10)}
GEOMEAN_SYSTEMS = ("aspirin", "cu108", "cu256")
CODES = ("original", "jmp-ase")
MODES = ("direct", "conservative")
WEIGHTS, STRUCTURES = "jmp-s-random.pt", "structures.extxyz"


# ----------------------------------------------------------------------------------------------
# Parent side (jmp-ase's environment): weights, structures, cases, tables
# ----------------------------------------------------------------------------------------------
def make_weights(path: Path, seed: int) -> None:
    """A JMP-S-shaped checkpoint in JMP's key layout (bare state dict), drawn with ``seed``."""
    import torch

    from jmp_ase.nn.config import jmp_s
    from jmp_ase.nn.model import JMPPretrainedModel

    torch.manual_seed(seed)
    model = JMPPretrainedModel(jmp_s(), num_tasks=1)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(seed + 1)
    for key in sorted(k for k in state if k.endswith("scale_factor")):
        state[key] = 0.5 + 0.5 * torch.rand((), generator=generator)
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"seed": seed, **state}, path)


def make_structures(path: Path) -> None:
    """The benchmark's structures, written once so that both codes read the same positions."""
    import ase.io
    import numpy as np
    from ase.build import bulk

    from backbone_speed import system

    frames = []
    for name, repeat in SYSTEMS.items():
        if repeat is None:
            atoms = system(name)[1]
        else:
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
            atoms.positions += np.random.default_rng(0).normal(scale=0.02, size=atoms.positions.shape)
        atoms.info["name"] = name
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def read_structure(path: Path, name: str):
    import ase.io

    for atoms in ase.io.read(path, ":", format="extxyz"):
        if atoms.info.get("name") == name:
            return atoms
    raise KeyError(name)


def run_case(args, code: str, system: str, mode: str, threads: int, out: Path) -> dict:
    """One (code, system, mode) in a fresh subprocess; the child's JSON line or an error."""
    python = args.original_python if code == "original" else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--child", code, "--system", system, "--mode", mode,
           "--threads", str(threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--budget", str(args.budget), "--workdir", str(args.workdir), "--out", str(out),
           "--memory", args.memory]
    if code == "original":
        cmd += ["--original", str(args.original)]
    cap = int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else 0

    def limit():
        if cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    capped = f"cap {args.memory_limit_gb:g} GB" if cap else "no cap"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, env=env,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout ({args.timeout:g} s)", "stop": True}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        result = json.loads(lines[-1])
        if "error" in result:
            result["stop"] = True
        return result
    text = (proc.stderr or "") + (proc.stdout or "")
    oom = (proc.returncode in (-9, 137) or "MemoryError" in text or "alloc" in text.lower()
           or "out of memory" in text.lower())
    if oom:
        return {"error": f"does not fit ({capped})", "stop": True}
    tail = text.strip().splitlines()[-1:] or [f"exit {proc.returncode}, no output"]
    return {"error": f"failed (exit {proc.returncode}): {tail[0][:100]}", "stop": True}


def compare(a: Path, b: Path) -> dict | None:
    """Max |difference| of energy and forces of two children's outputs (None if one is missing)."""
    import numpy as np

    if not (a.exists() and b.exists()):
        return None
    x, y = np.load(a), np.load(b)
    out = {}
    for key in ("energy", "forces"):
        diff = float(np.abs(x[key].astype(np.float64) - y[key].astype(np.float64)).max())
        scale = float(np.abs(y[key]).max())
        out[key] = (diff, diff / scale if scale else float("nan"), scale)
    return out


def fmt_row(code, system, atoms, mode, r) -> str:
    head = f"{code:<9} {system:<8} {atoms:>6} {mode:<13}"
    if "error" in r and "model_ms" not in r:
        return f"{head} {r['error']}"
    idx = f"{r['index_ms']:>8.0f}" if r.get("index_ms") is not None else f"{'-':>8}"
    return (f"{head} {r.get('memory_mode', '-'):<5} {r['main_edges']:>7} {r['graph_ms']:>9.1f} "
            f"{r['model_ms']:>10.1f} {idx} {r['graph_ms'] + r['model_ms']:>10.1f} {r['n']:>2} "
            f"{r['peakrss_mb']:>8.0f}")


def run_table(args, threads: int) -> list[tuple[str, float, float]]:
    """All cases at one thread count; prints the table, returns (pair, total ratio, model ratio)."""
    import torch

    from backbone_speed import machine

    torch.set_num_threads(threads)
    print(f"\n# machine: {machine()}")
    print(f"# JMP-S (random weights, seed {args.seed}), cutoff {CUTOFF:g} A, max_neighbors {MAX_NEIGHBORS}, "
          f"float32, {threads} thread(s); median of {args.repeats} after {args.warmup} warm-up (n: timed); "
          f"per case: fresh process, address-space cap "
          f"{f'{args.memory_limit_gb:g} GB' if args.memory_limit_gb else 'none'}, timeout {args.timeout:g} s; "
          f"jmp-ase memory={args.memory}")
    header = (f"{'code':<9} {'system':<8} {'atoms':>6} {'mode':<13} {'mem':<5} {'main E':>7} {'graph ms':>9} "
              f"{'model ms':>10} {'idx ms':>8} {'total ms':>10} {'n':>2} {'peak MB':>8}")
    print(header)
    print("-" * len(header), flush=True)
    outdir = args.workdir / f"threads{threads}"
    outdir.mkdir(parents=True, exist_ok=True)
    stopped: set[tuple[str, str]] = set()
    results: dict[tuple[str, str, str], dict] = {}
    atoms_of = {}
    notes: set[str] = set()
    for system in args.cases:
        atoms_of[system] = len(read_structure(args.workdir / STRUCTURES, system))
        for mode in args.modes:
            for code in args.codes:
                out = outdir / f"{code}-{system}-{mode}.npz"
                saved = out.with_suffix(".json")
                if args.reuse and saved.exists():
                    r = dict(json.loads(saved.read_text()), reused=True)
                else:
                    for old in (out, saved):
                        if old.exists():
                            old.unlink()
                    if (code, mode) in stopped:
                        r = {"error": "skipped (a smaller system did not fit or timed out)"}
                    else:
                        r = run_case(args, code, system, mode, threads, out)
                        saved.write_text(json.dumps(r))
                if r.get("stop"):
                    stopped.add((code, mode))
                results[code, system, mode] = r
                print(fmt_row(code, system, atoms_of[system], mode, r) + ("  (earlier run)" if r.get("reused") else ""),
                      flush=True)
                if r.get("sparse") and r["sparse"] not in notes:
                    notes.add(r["sparse"])
                    print(f"#   original's SparseTensor: {r['sparse']} (see the module docstring)")
            diff = compare(outdir / f"original-{system}-{mode}.npz", outdir / f"jmp-ase-{system}-{mode}.npz")
            if diff:
                print("#   max |original - jmp-ase|: " + ", ".join(
                    f"{k} {d:.2e} ({rel:.1e} of max |{k}| {s:.3g})" for k, (d, rel, s) in diff.items()), flush=True)
    ratios = []
    print("# original / jmp-ase (total; model):")
    for system in args.cases:
        for mode in args.modes:
            o, j = results.get(("original", system, mode), {}), results.get(("jmp-ase", system, mode), {})
            if "model_ms" in o and "model_ms" in j:
                total = (o["graph_ms"] + o["model_ms"]) / (j["graph_ms"] + j["model_ms"])
                model = o["model_ms"] / j["model_ms"]
                print(f"#   {system:<8} {mode:<13} {total:6.2f}x  {model:6.2f}x")
                if system in GEOMEAN_SYSTEMS:
                    ratios.append((f"{system}/{mode}", total, model))
            else:
                print(f"#   {system:<8} {mode:<13}   (not both ran)")
    if ratios:
        gm_total = math.exp(statistics.mean(math.log(t) for _, t, _ in ratios))
        gm_model = math.exp(statistics.mean(math.log(m) for _, _, m in ratios))
        print(f"# geometric mean of original / jmp-ase over {len(ratios)} pairs "
              f"({', '.join(p for p, _, _ in ratios)}): total {gm_total:.2f}x, model {gm_model:.2f}x")
    print("# end: load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()), flush=True)
    return ratios


# ----------------------------------------------------------------------------------------------
# Child side: one case, in the environment of the code it runs
# ----------------------------------------------------------------------------------------------
def child_jmp_ase(args, atoms, weights: Path) -> dict:
    import torch

    from jmp_ase.calculators.calculator import JMPCalculator
    from jmp_ase.data.batch import batch_from_atoms

    with NoOrthogonalInit():
        calc = JMPCalculator.from_jmp_checkpoint(weights, head=0, forces=args.mode, memory=args.memory,
                                                 cutoff=CUTOFF, max_neighbors=MAX_NEIGHBORS)
    predictor, settings = calc.predictor, calc.graph_settings
    grad = predictor.needs_grad

    def build():
        return batch_from_atoms([atoms], settings, num_elements=predictor.num_elements, validate=False,
                                dtype=torch.float32, local_origin=True)

    def call(batch):
        with torch.set_grad_enabled(grad):
            out = predictor(batch, compute_stress=False)
        return {k: out[k].detach() for k in ("energy", "forces")}

    batch = build()
    with torch.set_grad_enabled(grad):
        chunk = predictor.model.backbone.lean_chunk_size(batch.indices, len(atoms),
                                                         batch.positions.requires_grad_(grad))
    info = {"main_edges": int(batch.indices.main_edge_index.shape[1]),
            "memory_mode": "fast" if chunk is None else "lean", "rss_before_mb": rss_mb()}
    del batch
    timing = time_repeats(build, call, args.warmup, args.repeats, args.budget)
    out = timing.pop("out")
    info.update(timing, index_ms=None)
    return info, out["energy"].numpy(), out["forces"].numpy()


def child(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    atoms = read_structure(args.workdir / STRUCTURES, args.system)
    weights = args.workdir / WEIGHTS
    info = {"code": args.child, "system": args.system, "mode": args.mode, "atoms": len(atoms)}
    try:
        if args.child == "original":
            from original_jmp import child_original as run
        else:
            run = child_jmp_ase
        result, energy, forces = run(args, atoms, weights)
        info.update(result)
        np.savez(args.out, energy=energy, forces=forces)
    except (MemoryError, RuntimeError) as err:
        text = str(err).lower()
        if not isinstance(err, MemoryError) and "alloc" not in text and "memory" not in text:
            raise
        info["error"] = "does not fit (" + (f"address-space cap {args.memory_limit_gb:g} GB)"
                                            if args.memory_limit_gb else "out of memory)")
        info["detail"] = str(err).splitlines()[0][:200]
    info["peakrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(info), flush=True)


# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring (and benchmarks/README.md) for what is timed.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--original", type=Path, default=os.environ.get("JMP_ORIGINAL_SRC"),
                   help="src folder of a facebookresearch/JMP checkout (holds jmp/); env JMP_ORIGINAL_SRC")
    p.add_argument("--original-python", default=os.environ.get("JMP_ORIGINAL_PYTHON", sys.executable),
                   help="Python with the original's dependencies; env JMP_ORIGINAL_PYTHON")
    p.add_argument("--threads", default="1", help="comma-separated thread counts, one table each (e.g. 1,2)")
    p.add_argument("--cases", default="aspirin,cu108,cu256,cu1000", help=f"comma-separated of {', '.join(SYSTEMS)}")
    p.add_argument("--modes", default="direct,conservative")
    p.add_argument("--codes", default="original,jmp-ase", help="comma-separated: original, jmp-ase")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per case")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats first")
    p.add_argument("--budget", type=float, default=60.0, help="s: after a slower repeat the series ends")
    p.add_argument("--timeout", type=float, default=1800.0, help="s per case (its process is killed)")
    p.add_argument("--memory-limit-gb", type=float, default=12.0,
                   help="address-space cap per case (0: none)")
    p.add_argument("--memory", choices=["auto", "fast", "lean"], default="auto", help="jmp-ase memory mode")
    p.add_argument("--seed", type=int, default=0, help="seed of the random JMP-S weights")
    p.add_argument("--reuse", action="store_true",
                   help="take a case's result from an earlier run in --workdir where there is one (same "
                        "thread count; marked 'earlier run') instead of running it again")
    p.add_argument("--workdir", type=Path, default=Path("runs/vs_original"),
                   help="weights, structures and per-case outputs")
    p.add_argument("--child", choices=CODES, help=argparse.SUPPRESS)
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.threads = int(args.threads)
        return args
    args.threads = [int(t) for t in str(args.threads).split(",")]
    args.cases = [c.strip() for c in args.cases.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",")]
    args.codes = [c.strip() for c in args.codes.split(",")]
    for value, allowed, what in ((args.cases, SYSTEMS, "case"), (args.modes, MODES, "mode"),
                                 (args.codes, CODES, "code")):
        bad = [v for v in value if v not in allowed]
        if bad:
            p.error(f"unknown {what} {bad}; choose from {list(allowed)}")
    if "original" in args.codes:
        if args.original is None:
            p.error("--original (or JMP_ORIGINAL_SRC) is required to run the original code "
                    "(or use --codes jmp-ase)")
        args.original = Path(args.original).resolve()
        if not (args.original / "jmp" / "models" / "gemnet" / "backbone.py").exists():
            p.error(f"--original {args.original}: no jmp/models/gemnet/backbone.py there")
    args.workdir = args.workdir.resolve()
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    weights = args.workdir / WEIGHTS
    seed_ok = False
    if weights.exists():
        import torch

        seed_ok = torch.load(weights, weights_only=True).get("seed") == args.seed
    if not seed_ok:
        print(f"# drawing JMP-S weights (seed {args.seed}) -> {weights}", flush=True)
        make_weights(weights, args.seed)
    if not (args.workdir / STRUCTURES).exists():
        make_structures(args.workdir / STRUCTURES)
    if "original" in args.codes:
        print(f"# original: {args.original} with {args.original_python}")
    for threads in args.threads:
        run_table(args, threads)


if __name__ == "__main__":
    main()
