"""The trainer against a bare training loop on the same model, data and optimizers.

Usage: python bench/train.py [--template dssm|deepfm] [--reps 5] [--threads 2] [--dir DIR] [--keep]
                             [--train-rows N] [--quiet 0.3] [--max-rounds N] [--max-wait S]

What it does (fixed seeds, the template's own model, data sizes and train params):
1. generates the template's train and eval sample tables into a scratch folder;
2. bare loop: recbuild's model, optimizers (``_make_optimizer``) and loss, under the trainer's
   torch settings, over the same rows pre-converted to tensors before timing (for retrieval the
   per-row logQ and item identities are computed here with plain numpy, not with the trainer's
   helpers); its final weights must equal the trainer's last checkpoint exactly (checked);
3. the trainer (``recbuild.ml.training.Trainer``, as `kind: train` runs it) without eval data, and with
   the template's periodic evaluation; the three runs alternate, medians reported;
4. start-up in a fresh process: interpreter + imports, the trainer's own set-up up to its first
   step (bounded by 1.5 s), the torch settings switch alone, and spawn -> first
   training step.

steps/s counts every step over the loop (from the first epoch's start to the end of the run,
evaluations and checkpoints included). The evaluation share is the time spent in evaluations +
checkpoints over the rest of the loop (the training steps). Figures are ratios within one run. On
a shared 2-core machine a busy neighbour wrecks two-thread runs (OpenMP barriers), so the CPU other
processes use is measured during every run; rounds (one run of each variant) repeat until --reps
of them were quiet, and only those are reported (all, with a warning, after --max-rounds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import OtherLoad, print_table, wait_for_quiet  # noqa: E402


# -- the template's training step ------------------------------------------------------------------
@dataclasses.dataclass
class Workload:
    model: dict
    params: dict  # the train artifact's params
    train_files: list[Path]
    eval_files: list[Path]


def load_workload(template: str, scratch: Path, train_rows: int | None) -> Workload:
    """The template's model and `checkpoints` params, its sample data written under ``scratch``."""
    from recbuild.ml import sampledata
    from recbuild.core.recipe.load import load_recipe
    from recbuild.core.recipe.templates import find_template

    overrides = [f"vars.train_rows={train_rows}"] if train_rows else []
    recipe = load_recipe(find_template(template), overrides)
    node = recipe.nodes["checkpoints"]
    files = {}
    for field in ("data", "eval_data"):
        source = recipe.nodes[node.params[field]]
        p = source.params
        columns = sampledata.generate(p["table"], seed=p.get("seed", 42), rows=p.get("rows"),
                                      split=p.get("split", "train"), n_items=p.get("n_items", 10000),
                                      n_users=p.get("n_users", 5000),
                                      n_categories=p.get("n_categories", 50),
                                      positive_rate=p.get("positive_rate", 0.5))
        folder = scratch / "data" / field
        folder.mkdir(parents=True, exist_ok=True)
        sampledata.write_parquet(columns, folder / "part-0.parquet")
        files[field] = [folder / "part-0.parquet"]
    return Workload(recipe.model, dict(node.params), files["data"], files["eval_data"])


def settings_of(work: Workload, threads: int):
    from recbuild.ml.training import TrainSettings

    names = {f.name for f in dataclasses.fields(TrainSettings)}
    given = {k: v for k, v in work.params.items() if k in names}
    return TrainSettings(**{**given, "threads": threads})


# -- bare loop -------------------------------------------------------------------------------------
def bare_batches(work: Workload, settings) -> list[tuple]:
    """(inputs, item identity, logQ, labels) per step, as tensors, the trainer's batch cuts."""
    import torch

    from recbuild.ml.feature_io import batch_to_numpy, numpy_to_tensors
    from recbuild.ml.models import resolve, task_of
    from recbuild.ml.models.features import group_features, io_specs, parse_features
    from recbuild.ml.training import iter_tables, positives_only

    config = resolve(work.model)
    task = task_of(config)
    specs = parse_features(config)
    label = settings.label_column
    columns = sorted({s.column for s in specs} | {label})
    row_filter = positives_only(label) if task == "retrieval" else None
    tables = list(iter_tables(work.train_files, columns, settings.batch_size, row_filter))
    arrays = [batch_to_numpy(t, io_specs(specs)) for t in tables]
    labels = [torch.from_numpy(t.column(label).to_numpy().astype(np.float32)) for t in tables]
    if task != "retrieval":
        return [(numpy_to_tensors(a), None, None, y) for a, y in zip(arrays, labels)]
    # Item identity = a distinct row of the item inputs (floats by bit pattern); logQ from the
    # click count of each item over the training positives, as the trainer defines it.
    items = [s.name for s in group_features(specs, "item")]
    keys = np.concatenate([_item_key_matrix(a, items) for a in arrays])
    _, identity = np.unique(keys, axis=0, return_inverse=True)
    identity = identity.ravel().astype(np.int64)
    counts = np.bincount(identity)
    log_q = np.log(np.maximum(counts, 1) / max(int(counts.sum()), 1)).astype(np.float32)[identity]
    bounds = np.cumsum([0] + [len(y) for y in labels])
    return [(numpy_to_tensors(a), identity[lo:hi], torch.from_numpy(log_q[lo:hi]), y)
            for a, y, lo, hi in zip(arrays, labels, bounds[:-1], bounds[1:])]


def _item_key_matrix(arrays: dict, names: list[str]) -> np.ndarray:
    parts = []
    for name in names:
        value = arrays[name]
        if value.dtype == np.float32:
            value = value.view(np.int32)
        parts.append(value.reshape(len(value), -1).astype(np.int64))
    return np.concatenate(parts, axis=1)


def bare_loop(work: Workload, settings, batches) -> tuple[float, int, dict]:
    """(loop seconds, steps, final state_dict)."""
    import torch

    from recbuild.ml.models import build_model, resolve
    from recbuild.ml.training import _make_optimizer, _torch_settings, in_batch_softmax_loss

    config = resolve(work.model)
    temperature = float(config.get("temperature", 0.05))
    with _torch_settings(settings.threads, settings.seed):
        model = build_model(config)
        optimizer = _make_optimizer(model, settings.lr)
        model.train()
        started, steps = time.perf_counter(), 0
        for _ in range(settings.epochs):
            for inputs, identity, log_q, labels in batches:
                outputs = model(inputs)
                if identity is None:
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs["logits"], labels)
                else:
                    loss = in_batch_softmax_loss(outputs["user_tower_emb"], outputs["item_tower_emb"],
                                                 temperature, identity,
                                                 log_q if settings.logq_correction else None)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
        seconds = time.perf_counter() - started
    return seconds, steps, {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- trainer ---------------------------------------------------------------------------------------
class _LoopClock:
    """The trainer's progress: the training loop starts when the count of batches does (the phase
    before it covers torch start-up and reading the data)."""

    def __init__(self):
        self.started = None

    def __call__(self, total=None, unit=""):
        return self

    def phase(self, name="", total=None, unit=None):
        if unit == "batches" and self.started is None:
            self.started = time.perf_counter()
        return self

    def label(self, name):
        pass

    def advance(self, n=1):
        pass

    def note(self, **facts):
        pass

    def close(self):
        pass


def trainer_run(work: Workload, settings, out: Path, with_eval: bool) -> dict:
    """One trainer run; loop seconds, seconds inside evaluations + checkpoints, steps."""
    from recbuild.ml.training import Trainer

    out.mkdir(parents=True)
    clock = _LoopClock()
    trainer = Trainer(work.model, settings, out, progress_factory=clock)
    inside = [0.0]
    checkpoint = trainer._checkpoint

    def timed_checkpoint(model, step):
        started = time.perf_counter()
        checkpoint(model, step)
        inside[0] += time.perf_counter() - started

    trainer._checkpoint = timed_checkpoint
    meta = trainer.run(work.train_files, work.eval_files if with_eval else [])
    seconds = time.perf_counter() - clock.started
    return {"seconds": seconds, "eval_seconds": inside[0], "steps": meta["final_step"], "out": out}


def same_weights(state: dict, checkpoint: Path) -> bool:
    import torch

    saved = torch.load(str(checkpoint), weights_only=True)
    return sorted(saved) == sorted(state) and all(torch.equal(saved[k], state[k]) for k in saved)


# -- start-up in a fresh process ----------------------------------------------------------------------
STARTUP_CHILD = """
import json, sys, time
spawned = float(sys.argv[1])
sys.path.insert(0, {repo!r})
import torch
from recbuild.ml.training import Trainer, TrainSettings, _torch_settings
imported = time.time()
if {switch_only!r}:
    started = time.perf_counter()
    with _torch_settings(2, 42):
        switched = time.perf_counter() - started
    print(json.dumps({{"switch": switched}}))
    raise SystemExit(0)
class FirstStep(Exception):
    pass
class First:  # the trainer's progress: the count of batches starts right before the first step
    def __call__(self, total=None, unit=""):
        return self
    def phase(self, name="", total=None, unit=None):
        if unit == "batches":
            raise FirstStep(time.time())
        return self
    def label(self, name): pass
    def advance(self, n=1): pass
    def note(self, **facts): pass
    def close(self): pass
first = First()
settings = TrainSettings(**json.loads({settings!r}))
trainer = Trainer(json.loads({model!r}), settings, {out!r}, progress_factory=first)
try:
    trainer.run({train!r}, {eval!r})
except FirstStep as reached:
    print(json.dumps({{"imports": imported - spawned, "first_step": reached.args[0] - spawned}}))
"""


def startup(work: Workload, settings, scratch: Path, switch_only: bool) -> dict:
    out = scratch / f"startup-{time.perf_counter_ns()}"
    out.mkdir()
    code = STARTUP_CHILD.format(repo=str(REPO), switch_only=switch_only,
                                settings=json.dumps(dataclasses.asdict(settings)),
                                model=json.dumps(work.model), out=str(out),
                                train=[str(f) for f in work.train_files],
                                eval=[str(f) for f in work.eval_files])
    done = subprocess.run([sys.executable, "-c", code, repr(time.time())], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"start-up child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", default="dssm", choices=["dssm", "deepfm"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=None, help="override vars.train_rows")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--max-wait", type=float, default=120,
                        help="s to wait for a quiet machine before each round")
    parser.add_argument("--quiet", type=float, default=0.3,
                        help="a round counts when other processes used fewer cores than this")
    parser.add_argument("--max-rounds", type=int, default=None, help="default: 3 x reps")
    args = parser.parse_args()
    args.max_rounds = args.max_rounds or 3 * args.reps

    scratch = args.dir or Path(tempfile.mkdtemp(prefix="recbuild-bench-train-"))
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RECBUILD_CACHE_DIR", str(scratch / "recipe-cache"))
    try:
        run(args, scratch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


VARIANTS = ["bare", "trainer, no eval", "trainer, with eval"]


def one_round(index: int, work: Workload, settings, batches, scratch: Path) -> dict:
    """Each variant once, in an order rotated by ``index`` (no variant always runs first): per
    variant its loop seconds, steps, the other processes' load; the trainer's eval seconds."""
    order = VARIANTS[index % 3:] + VARIANTS[:index % 3]
    results = {}
    for variant in order:
        with OtherLoad() as load:
            if variant == "bare":
                spent, steps, state = bare_loop(work, settings, batches)
                result = {"seconds": spent, "steps": steps, "state": state}
            else:
                with_eval = variant.endswith("with eval")
                out = scratch / "runs" / f"{index}-{'eval' if with_eval else 'no-eval'}"
                result = trainer_run(work, settings, out, with_eval=with_eval)
        results[variant] = {**result, "other": load.cores}
    final = results["trainer, with eval"]
    checkpoint = final["out"] / f"model.ckpt-{final['steps']}" / "model.pt"
    if not same_weights(results["bare"]["state"], checkpoint):
        sys.exit("the bare loop's final weights differ from the trainer's checkpoint")
    if len({r["steps"] for r in results.values()}) != 1:
        sys.exit(f"step counts differ: { {v: r['steps'] for v, r in results.items()} }")
    shutil.rmtree(scratch / "runs", ignore_errors=True)
    return results


def run(args, scratch: Path) -> None:
    import torch

    work = load_workload(args.template, scratch, args.train_rows)
    settings = settings_of(work, args.threads)
    batches = bare_batches(work, settings)
    print(f"template {args.template}: {settings.epochs} epochs x {len(batches)} steps, batch "
          f"{settings.batch_size}, eval_every {settings.eval_every}, {settings.threads} threads; "
          f"torch {torch.__version__}")

    # Rounds until --reps of them ran with no busy neighbour (other processes' CPU below --quiet
    # cores in every run of the round), or --max-rounds.
    rounds, clean = [], []
    while len(clean) < args.reps and len(rounds) < args.max_rounds:
        wait_for_quiet(args.max_wait)
        rounds.append(one_round(len(rounds), work, settings, batches, scratch))
        quiet = max(r["other"] for r in rounds[-1].values()) < args.quiet
        if quiet:
            clean.append(rounds[-1])
        print(f"round {len(rounds)} ({'quiet' if quiet else 'busy neighbour'}): " + ", ".join(
            f"{v} {r['seconds']:.2f} s / others {r['other']:.2f}" for v, r in rounds[-1].items()),
            file=sys.stderr, flush=True)
    used = clean if len(clean) >= args.reps else rounds
    note = f"{len(used)} rounds without a busy neighbour" if used is clean else \
        f"only {len(clean)} of {len(rounds)} rounds were quiet: all rounds reported, figures are noisy"
    report_rounds(used, note)
    report_startup(work, settings, scratch, args)


def report_rounds(rounds: list[dict], note: str) -> None:
    n = rounds[0]["bare"]["steps"]
    seconds = {v: [r[v]["seconds"] for r in rounds] for v in VARIANTS}
    rate = {v: n / statistics.median(seconds[v]) for v in VARIANTS}
    # Runs of one round are minutes apart at most: the median of per-round ratios is the figure
    # least moved by the machine's slow drifts (the ratio of medians is printed beside it).
    paired = {v: statistics.median(r["bare"]["seconds"] / r[v]["seconds"] for r in rounds)
              for v in VARIANTS}
    rows = [[v, f"{rate[v]:.1f}", f"{paired[v]:.2f}", f"{rate[v] / rate['bare']:.2f}",
             " ".join(f"{s:.2f}" for s in seconds[v]),
             " ".join(f"{r[v]['other']:.2f}" for r in rounds)] for v in VARIANTS]
    print_table(["run", "steps/s (median)", "vs bare (median of rounds)", "vs bare (of medians)",
                 "loop s per round", "others' cores"], rows,
                f"{n} steps per run, {note}; bare weights == trainer checkpoint (checked)")
    with_eval = [r["trainer, with eval"] for r in rounds]
    inside = statistics.median(r["eval_seconds"] for r in with_eval)
    steps_only = statistics.median(r["seconds"] - r["eval_seconds"] for r in with_eval)
    print(f"\nevaluation + checkpoints: {inside:.2f} s per run = {100 * inside / steps_only:.1f}% of "
          f"the training steps' time ({steps_only:.2f} s)")


def report_startup(work: Workload, settings, scratch: Path, args) -> None:
    runs = [startup(work, settings, scratch, switch_only=False) for _ in range(args.reps)]
    switches = [startup(work, settings, scratch, switch_only=True)["switch"] for _ in range(args.reps)]
    imports = statistics.median(r["imports"] for r in runs)
    first = statistics.median(r["first_step"] for r in runs)
    print_table(["phase", "s (median)"],
                [["interpreter + import torch, recbuild.ml.training", f"{imports:.2f}"],
                 ["trainer set-up (torch settings, model, data, catalog, eval set)",
                  f"{first - imports:.2f}"],
                 ["  of which the torch settings switch (measured alone)",
                  f"{statistics.median(switches):.2f}"],
                 ["spawn -> first training step", f"{first:.2f}"]],
                f"start-up in a fresh process ({args.reps} runs)")


if __name__ == "__main__":
    main()
