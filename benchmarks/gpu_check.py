"""GPU check: the private steps' speed and memory, and DP-RandP's wall time, in one run.

Made for the first GPU lent (one H100 or H200; device time is short: one run
of at most 8 minutes: --budget-s 450, and a case overrunning the end is killed
at most 30 s later). It writes `gpu_check.json` and `gpu_check.md` to --out
(default: $OUT where set, else runs/gpu_check) at the start and after every
case, so a run cut short still leaves both files with what it measured. If
JAX finds no GPU, the full run stops at once (--allow-cpu overrides).

1. Step speed (`benchmarks/step_speed.py`'s `bench`: the gradient step only, no
   augmentation, noise or update): examples/s, ratio to the non-private step,
   device peak and XLA's compiled memory of the non-private, vmap and fast
   steps and jax-privacy (when importable), for WRN-16-4 @32 B = 1024 fp32,
   WRN-16-4 @32 B = 256 x augmult 16, ResNet-50 @224 B = 128, ResNet-18 @224
   B = 256 (GroupNorm, fp32) and WRN-16-4 @32 B = 1024 bf16. Each case runs in
   a process of its own, so its peak memory is its own and an out-of-memory
   error or a crash costs that case only; XLA may use 90% of the GPU's memory
   (XLA_PYTHON_CLIENT_MEM_FRACTION, unless set), and a step whose compiled
   memory exceeds 95% of that is not run. The first call of each step is a
   warm-up (compilation and autotuning are not timed); timed calls are
   synchronised with `block_until_ready`, interleaved across the steps, at
   least 3 and 1 s of calls per step where the budget allows; rows give the
   median.
2. DP-RandP, `configs/dprandp_cifar10.py:eps=1` (B = 4096, augmult 16, the
   recipe's clipping and micro-batch 64), on the CIFAR-10 image-folder zip
   (--zip; synthetic uint8 images of the same shape when it is absent or
   unreadable, which both files then say):
   - Phase I is not run in the trainer (`pretrain.steps=0`): its step
     (`dpjax.randp.pretrain.make_train_step`, what Phase I runs: StyleGAN-
     Oriented images made on the device, two views, WRN-16-4 + projection
     head, batch 256) is compiled and timed alone, in groups of steps
     dispatched back to back as Phase I's loop does (median of the groups);
   - then the real trainer (`dpjax.train.loop.train_and_evaluate`, Phase I
     skipped, `max_steps_this_run`) runs 1 + 10 steps, logging every step; a
     step's time is B / the trainer's own examples/s for that step (the loop
     synchronises on the released update). The first step of a phase includes
     its compilation and is left out. By default the timed run has no Phase II
     (`phases.head_steps=0`: one compilation less), and Phase II is projected
     at Phase III's step time, an upper bound (Phase II trains only the head);
     --randp-head-steps 2 times one Phase II step instead.
   Projected wall time of the full recipe = t(Phase I step) x 82,031
     + t(Phase II step) x 96 + t(Phase III step) x 779 + the fixed costs
     measured here (data loading, Phase I compilation, the trainer's setup,
     sigma calibration and compilation). Evaluations (every 100 steps) and
     checkpoints (every 25) are not included. When the recipe clips with
     vmap, an estimate for `privacy.clipping=fast` is added: the private
     steps' time scaled by the fast/vmap time ratio of the augmult-16 case.

The budget: cases run in the order above, which is their priority (all of them
need about 11 minutes on a cold machine, more than the budget). Each case may
use up to its `max_s` while leaving every later case its `min_s` (FULL_CASES);
what it leaves unused goes to the later ones. A step case stops starting
compilations that would not end in its share (guessed from its longest one so
far) and times what it has; DP-RandP's trainer is stopped by SIGTERM after a
step (as on preemption) so that its steps so far are kept. A case still
running at the end of its share gets SIGTERM, then SIGKILL 20-30 s later, and
keeps what it had saved; cases left when the budget is spent are "skipped".

Usage:

    python benchmarks/gpu_check.py                       # full, on a GPU
    python benchmarks/gpu_check.py --smoke               # tiny sizes on a CPU (CI), ~30 s
    python benchmarks/gpu_check.py --cases resnet50_224_b128_fp32,wrn16_4_b1024_bf16

On the lent device machine (nvidia-h200: its python3 has JAX with CUDA, flax,
optax, PIL and orbax, but not ml_collections or dp_accounting, which the
trainer needs): prepare with `launch/gpu_check.sh` here (it copies the CIFAR-10
zip and those packages into the git-ignored `.data/` and prints the call),
then make one device `run` call with

    carry:     [".data/cifar10-jpeg.zip", ".data/gpu_check_site"]
               (and ".whl" for jax-privacy wheels: see launch/gpu_check.sh)
    timeout_s: 540
    command:   set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py
               --out $OUT 2>&1 | tee $OUT/gpu_check.log

The results come back as gpu_check.json, gpu_check.md and gpu_check.log under
the reply's files_at folder. `.data/gpu_check_site` (--site) is appended to sys.path,
after the machine's own packages, in every case's process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DEFAULT_ZIP = os.path.join(".data", "cifar10-jpeg.zip")
DEFAULT_SITE = os.path.join(".data", "gpu_check_site")
RANDP_CASE = "dprandp_cifar10_eps1"
RANDP_CONFIG = "configs/dprandp_cifar10.py"

# Run in this order, which is the priority order: the budget is too short for everything on a
# cold machine (the sum of max_s is ~11 min). A case may use up to `max_s` seconds while
# leaving every later case its `min_s`; what it leaves unused goes to the later ones. The
# augmult-16 case comes before DP-RandP, whose stop timer and fast-clipping estimate use its
# step times.
FULL_CASES = (
    dict(name="wrn16_4_b1024_fp32", model="wrn16_4", size=32, batch=1024, augmult=1,
         dtype="float32", min_s=45, max_s=120),
    dict(name="wrn16_4_b256_k16_fp32", model="wrn16_4", size=32, batch=256, augmult=16,
         dtype="float32", min_s=45, max_s=120),
    dict(name=RANDP_CASE, kind="dprandp", min_s=120, max_s=240),
    dict(name="resnet50_224_b128_fp32", model="resnet50", size=224, batch=128, augmult=1,
         dtype="float32", min_s=45, max_s=120),
    dict(name="resnet18_224_b256_fp32", model="resnet18", size=224, batch=256, augmult=1,
         dtype="float32", min_s=45, max_s=100),
    dict(name="wrn16_4_b1024_bf16", model="wrn16_4", size=32, batch=1024, augmult=1,
         dtype="bfloat16", min_s=40, max_s=90),
)
# The same code paths at CPU sizes: a small MLP for the step cases, the recipe's `runlocal`
# variant (small CNN) made smaller still for DP-RandP.
_TINY = dict(model="mlp", model_kwargs=dict(width=16), size=8)
SMOKE_CASES = (
    dict(name="tiny_mlp_b4_fp32", batch=4, augmult=1, dtype="float32", min_s=5, max_s=120,
         **_TINY),
    dict(name="tiny_mlp_b2_k2_bf16", batch=2, augmult=2, dtype="bfloat16", min_s=5,
         max_s=120, **_TINY),
    dict(name=RANDP_CASE, kind="dprandp", min_s=5, max_s=240),
)
K16_HINT_CASES = ("wrn16_4_b256_k16_fp32",)  # whose fast/vmap times DP-RandP uses
GRACE_S = {"steps": 20.0, "dprandp": 30.0}   # SIGTERM ... SIGKILL


# --- results: one JSON and one Markdown file, rewritten after every case ----------------

def _finite(x):
    """JSON-safe: non-finite floats become None, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _fmt(x, spec=".3g", none="—") -> str:
    return none if x is None else format(x, spec)


def _mib(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:,.0f} MiB" if n >= 10 * 2**20 else f"{n / 2**20:.2f} MiB"


def _hours(s) -> str:
    return "—" if s is None else f"{s:,.0f} s ({s / 3600:.2f} h)"


def render_markdown(report: dict) -> str:
    env = report.get("environment") or {}
    lines = [f"# GPU check ({report['mode']})", ""]
    lines.append(f"Started {report['started']}; status **{report['status']}**; wall "
                 f"{_fmt(report.get('wall_s'), '.0f')} s of a {report['budget_s']:.0f} s budget.")
    if env:
        lines.append(f"Device: {env.get('device_kind')} ({env.get('platform')}, "
                     f"{env.get('device_count')} device(s), allocator limit "
                     f"{_mib(env.get('memory_limit_bytes'))}); python {env.get('python')}, "
                     f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, flax "
                     f"{env.get('flax')}, optax {env.get('optax')}, numpy {env.get('numpy')}; "
                     f"jax-privacy: {env.get('jax_privacy') or env.get('jax_privacy_note')}.")
    lines.append(f"Command: `{report['command']}`")
    problems = []
    if any(c.get("kind") != "dprandp" for c in report["cases"]):
        lines += ["", "## Step speed (gradient step only; median of interleaved, "
                  "synchronised calls after a warm-up)", "",
                  "| case | model | B | K | dtype | step | ex/s | ratio to non-private | "
                  "device peak | compiled mem | compile s | timed calls |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in report["cases"]:
        if case.get("kind") == "dprandp":
            continue
        for r in case.get("rows") or []:
            lines.append(
                f"| {case['name']} | {r['model']}@{r['size']} | {r['batch']} | "
                f"{r['augmult']} | {r['dtype']} | {r['step']} | "
                f"{_fmt(r.get('examples_per_s'), ',.1f')} | {_fmt(r.get('ratio'), '.3f')} | "
                f"{_mib(r.get('device_peak_bytes'))} | {_mib(r.get('compiled_bytes'))} | "
                f"{_fmt(r.get('compile_s'), '.1f')} | {r.get('repeats', 0)} |")
            if r.get("error"):
                problems.append(f"{case['name']} / {r['step']}: {r['error']}")
        if case["status"] != "ok":
            problems.append(f"{case['name']}: {case['status']}"
                            + (f": {case['error']}" if case.get("error") else ""))
    if any(c.get("kind") != "dprandp" for c in report["cases"]):
        lines += ["", "Device peak: the process's running peak after the step's first run "
                  "(steps run least compiled memory first, one process per case); n/a where "
                  "the device does not report it (CPU)."]
    randp = next((c for c in report["cases"] if c.get("kind") == "dprandp"), None)
    if randp is not None:
        lines += ["", f"## DP-RandP: `{randp.get('config', RANDP_CONFIG)}` "
                  f"(case {randp['name']})", ""]
        lines += _randp_markdown(randp)
        if randp["status"] != "ok":
            problems.append(f"{randp['name']}: {randp['status']}"
                            + (f": {randp['error']}" if randp.get("error") else ""))
    for note in report.get("notes", []):
        problems.append(note)
    if problems:
        lines += ["", "## Errors, skips and notes", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _randp_markdown(c: dict) -> list[str]:
    out = []
    data = c.get("data") or {}
    if data:
        out.append(f"Data: {data.get('description')} (loaded in "
                   f"{_fmt(data.get('load_s'), '.1f')} s).")
    st = c.get("settings") or {}
    if st:
        out.append(f"Timed run: {st['model']} ({st['model_dtype']}), B = {st['batch_size']} x "
                   f"augmult {st['augmult']}, micro-batch {st['micro_batch_size']}, clipping "
                   f"{st['clipping']}, {st['head_steps_timed_run']} Phase II steps; Phase I "
                   f"batch {st['pretrain_batch_size']}.")
    p1, pr, proj = c.get("phase1") or {}, c.get("private") or {}, c.get("projection") or {}
    out += ["", "| part | steps in the recipe | timed steps | s / step (median) | "
            "projected s |", "|---|---|---|---|---|"]
    for key, label in (("phase1", "Phase I (pretrain step)"),
                       ("phase2", "Phase II (head only)"), ("phase3", "Phase III (all)")):
        part = proj.get(key) or {}
        src = p1 if key == "phase1" else (pr.get(key) or {})
        out.append(f"| {label} | {_fmt(part.get('recipe_steps'), ',d')} | "
                   f"{src.get('timed_steps', 0)} | {_fmt(src.get('seconds_per_step'), '.4g')} | "
                   f"{_fmt(part.get('seconds'), ',.0f')} |")
    if proj:
        out.append(f"| fixed costs (data, compilations, setup) | | | | "
                   f"{_fmt(proj.get('fixed_s'), ',.0f')} |")
        out.append(f"| **total** | | | | **{_hours(proj.get('total_s'))}** |")
    out.append("")
    for note in c.get("notes", []):
        out.append(f"- {note}")
    if proj.get("fast_estimate_total_s") is not None:
        out.append(f"- Estimate with `privacy.clipping=fast` (not run): "
                   f"{_hours(proj['fast_estimate_total_s'])} (Phase II/III step times x "
                   f"{proj['fast_over_vmap']:.3f}, the fast/vmap step-time ratio of case "
                   f"{proj['fast_over_vmap_from']}).")
    return out


class Report:
    """The run's results, written to `out` (JSON and Markdown) on every `write`."""

    def __init__(self, out: str, mode: str, budget_s: float, cases, command: str):
        os.makedirs(out, exist_ok=True)
        self.json_path = os.path.join(out, "gpu_check.json")
        self.md_path = os.path.join(out, "gpu_check.md")
        self.t0 = time.monotonic()
        self.data = dict(
            format=1, mode=mode, status="running",
            started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            budget_s=budget_s, wall_s=0.0, command=command, git=_git_commit(),
            environment=None, notes=[],
            cases=[dict(name=c["name"], kind=c.get("kind", "steps"), status="pending")
                   for c in cases])

    def case(self, name: str) -> dict:
        return next(c for c in self.data["cases"] if c["name"] == name)

    def update_case(self, name: str, result: dict) -> None:
        case = self.case(name)
        case.clear()
        case.update(result)
        if self.data["environment"] is None and result.get("environment"):
            self.data["environment"] = result["environment"]

    def write(self, status: str | None = None) -> None:
        if status:
            self.data["status"] = status
        self.data["wall_s"] = time.monotonic() - self.t0
        data = _finite(self.data)
        _atomic_write(self.json_path, json.dumps(data, indent=1, allow_nan=False) + "\n")
        _atomic_write(self.md_path, render_markdown(data))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")
    except Exception:
        pass
    return None


# --- the parent: cases in child processes, within the budget ----------------------------

def run_all(args) -> dict:
    cases = [dict(c) for c in (SMOKE_CASES if args.smoke else FULL_CASES)]
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {c["name"] for c in cases})
        if unknown:
            raise SystemExit(f"unknown case(s) {unknown}; cases: {[c['name'] for c in cases]}")
        cases = [c for c in cases if c["name"] in wanted]
    out = args.out or os.environ.get("OUT") or os.path.join(REPO, "runs", "gpu_check")
    command = " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    report = Report(out, "smoke" if args.smoke else "full", args.budget_s, cases, command)
    report.write()
    end = time.time() + args.budget_s
    tmp = tempfile.mkdtemp(prefix="gpu_check_")
    hints: dict = {}
    stop_reason = ""
    for i, case in enumerate(cases):
        kind = case.get("kind", "steps")
        remaining = end - time.time()
        share = min(case["max_s"], remaining - sum(c["min_s"] for c in cases[i + 1:]))
        share = min(max(share, case["min_s"]), remaining)
        if share < min(case["min_s"], 20.0) or stop_reason:
            report.update_case(case["name"], dict(
                name=case["name"], kind=kind, status="skipped",
                error=stop_reason or f"time budget spent ({args.budget_s:.0f} s in all)"))
            report.write()
            continue
        spec = dict(case, kind=kind, smoke=args.smoke, deadline=time.time() + share,
                    zip=args.zip, site=args.site, hints=hints, randp_steps=args.randp_steps,
                    randp_clipping=args.randp_clipping, randp_head_steps=args.randp_head_steps,
                    allow_cpu=args.allow_cpu,
                    result=os.path.join(tmp, f"{case['name']}.json"))
        print(f"=== {case['name']}: up to {share:.0f} s ({remaining:.0f} s left)", flush=True)
        result = _run_child(spec, share, GRACE_S[kind])
        report.update_case(case["name"], result)
        platform_ = (result.get("environment") or {}).get("platform")
        if platform_ == "cpu" and not (args.smoke or args.allow_cpu):
            stop_reason = "not run: JAX found no GPU (platform cpu; --allow-cpu runs anyway)"
            report.data["notes"].append(f"JAX found no GPU in {case['name']}'s process: "
                                        "no case was run at full size")
        report.write()
        if case["name"] in K16_HINT_CASES or (args.smoke and kind == "steps"):
            hints["k16"] = {r["step"]: r.get("seconds") for r in result.get("rows") or []}
            hints["k16_batch"], hints["k16_case"] = case["batch"], case["name"]
        print(f"=== {case['name']}: {result['status']} in {result.get('wall_s', 0):.0f} s",
              flush=True)
    statuses = {c["status"] for c in report.data["cases"]}
    report.write("complete" if statuses == {"ok"} else "incomplete")
    print(render_markdown(_finite(report.data)), flush=True)
    print(f"wrote {report.json_path} and {report.md_path}", flush=True)
    return report.data


def _run_child(spec: dict, share: float, grace: float) -> dict:
    """Runs one case in a fresh process; SIGTERM at the end of its share, SIGKILL after
    `grace`. Returns the child's result (its last saved state if it was stopped)."""
    spec_path = spec["result"] + ".spec"
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ)
    if not spec["smoke"]:
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")  # 72 GB of an 80 GB H100
    else:  # CPU smoke: compile time is most of it; XLA's cheap optimisation level halves it
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                            " --xla_llvm_disable_expensive_passes=true").strip()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", spec_path],
                            env=env, cwd=REPO)
    how = None
    try:
        proc.wait(timeout=max(share, 1.0))
    except subprocess.TimeoutExpired:
        how = "stopped (SIGTERM) at the end of its share of the budget"
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            how = f"killed {grace:.0f} s after SIGTERM at the end of its share of the budget"
            proc.kill()
            proc.wait()
    result = _read_json(spec["result"]) or dict(name=spec["name"], kind=spec["kind"])
    result["wall_s"] = time.monotonic() - t0
    if result.get("status") in (None, "running"):
        result["status"] = "cut" if how else "crashed"
        result["error"] = how or f"the case's process exited with {proc.returncode} " \
                                 "before saving a result"
    elif how:
        result.setdefault("notes", []).append(how)
    result["returncode"] = proc.returncode
    return result


# --- the children ---------------------------------------------------------------------

class _Stop(BaseException):
    """SIGTERM in a child outside the trainer (the parent's end of share)."""


def _on_sigterm(signum, frame):
    raise _Stop("SIGTERM: end of this case's share of the time budget")


def child_main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    site = spec.get("site") or ""
    site = site if os.path.isabs(site) else os.path.join(REPO, site)
    if site and os.path.isdir(site):
        sys.path.append(site)  # after the machine's own packages
    signal.signal(signal.SIGTERM, _on_sigterm)
    result = dict(name=spec["name"], kind=spec["kind"], status="running", error=None,
                  notes=[], environment=None)
    save = lambda: _atomic_write(spec["result"], json.dumps(_finite(result), allow_nan=False))
    t0 = time.monotonic()
    try:
        result["environment"] = _environment()
        save()
        if result["environment"]["platform"] == "cpu" and not (spec["smoke"]
                                                               or spec["allow_cpu"]):
            raise RuntimeError("JAX found no GPU (platform cpu): full sizes not run "
                               "(--allow-cpu runs them anyway)")
        if spec["kind"] == "dprandp":
            _randp_case(spec, result, save)
        else:
            _steps_case(spec, result, save)
    except _Stop as e:
        result["status"], result["error"] = "cut", str(e)
    except Exception as e:
        traceback.print_exc()
        lines = str(e).strip().splitlines()  # as step_speed.error_text, which may not import
        result["status"] = "error"
        result["error"] = f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the result be written
    result["wall_s"] = time.monotonic() - t0
    save()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is saved: exit without waiting for work still queued on the device (after
    # a SIGTERM) or for library threads at interpreter exit.
    os._exit(0)


def _environment() -> dict:
    """Versions and the device; a field that cannot be read is None (never an error)."""
    import jax

    from benchmarks import step_speed

    def get(fn):
        try:
            return fn()
        except Exception:
            return None

    def version(module):
        return get(lambda: __import__(module).__version__)

    dev = jax.devices()[0]  # the one call that must work: the case needs a device
    return dict(python=platform.python_version(), jax=jax.__version__,
                jaxlib=version("jaxlib"), flax=version("flax"), optax=version("optax"),
                numpy=version("numpy"), platform=dev.platform, device_kind=dev.device_kind,
                device_count=get(jax.device_count),
                memory_limit_bytes=step_speed.device_memory()["limit"],
                jax_privacy=getattr(step_speed.jax_privacy, "__version__", None),
                jax_privacy_note=step_speed.JAX_PRIVACY_NOTE or None,
                default_matmul_precision=get(
                    lambda: str(jax.config.jax_default_matmul_precision)),
                xla_mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
                host=platform.node(), cpus=os.cpu_count())


def _steps_case(spec: dict, result: dict, save) -> None:
    """One step_speed case: the only place this script touches the step functions."""
    from benchmarks import step_speed

    steps = step_speed.STEPS
    result.update({k: spec.get(k) for k in ("model", "size", "batch", "augmult", "dtype",
                                            "model_kwargs")})
    result["steps"] = list(steps)
    if step_speed.jax_privacy is None:
        result["notes"].append(f"jax_privacy row skipped: {step_speed.JAX_PRIVACY_NOTE}")
    now = time.time()
    share = spec["deadline"] - now
    # Stop starting compilations with a little of the share left for the first runs and
    # the timed calls.
    deadline = time.monotonic() + share - max(5.0, 0.1 * share)
    limit = step_speed.device_memory()["limit"]

    def report(rows):
        result["rows"] = rows
        save()

    smoke = spec["smoke"]
    rows = step_speed.bench(
        spec["model"], spec["batch"], spec["augmult"], spec["size"], spec["dtype"],
        repeats=2 if smoke else 3, steps=steps, model_kwargs=spec.get("model_kwargs"),
        min_seconds=0.0 if smoke else 1.0, max_repeats=2 if smoke else 30,
        deadline=deadline, memory_limit=int(0.95 * limit) if limit else None, report=report)
    result["rows"] = rows
    timed = [r for r in rows if r["examples_per_s"]]
    result["status"] = "ok" if len(timed) == len(rows) else ("partial" if timed else "error")
    if not timed:
        result["error"] = "no step timed"


def _synthetic_cifar(num_train: int, num_test: int):
    import numpy as np

    from dpjax.data.sources import ArrayDataset, DataSplits

    rng = np.random.default_rng(0)

    def split(n):
        return ArrayDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                            (np.arange(n) % 10).astype(np.int32))

    return DataSplits(split(num_train), split(num_test), 10,
                      tuple(f"class{i}" for i in range(10)), "synthetic")


def _randp_configs(spec: dict):
    """(the recipe as published, the config of the timed run)."""
    from dpjax import config as config_lib

    path = os.path.join(REPO, RANDP_CONFIG)
    arg = "eps=1,runlocal=True" if spec["smoke"] else "eps=1"
    recipe = config_lib.load_config(f"{path}:{arg}")
    run = config_lib.load_config(f"{path}:{arg}")
    if spec["smoke"]:  # the recipe's runlocal variant, smaller still
        for c in (recipe, run):
            c.pretrain.batch_size, c.pretrain.hidden_dim = 8, 64
            c.pretrain.families = ("spectrum",)  # compiles 3x faster than StyleGAN on a CPU
            c.model.kwargs.width = 8
            c.batch_size, c.micro_batch_size, c.num_steps = 32, 16, 8
    run.pretrain.steps = 0          # Phase I is timed on its own (below), not run
    # 0: no Phase II in the timed run (one compilation less; Phase II is projected at Phase
    # III's step time); 2: one compiled and one timed Phase II step.
    run.phases.head_steps = spec["randp_head_steps"]
    run.log_every = 1               # a metrics record (and a sync) per step
    run.eval_every = 0
    run.checkpoint_every = 10**6    # only the final one
    run.progress_bar = False
    if spec.get("randp_clipping") in ("vmap", "fast"):
        run.privacy.clipping = spec["randp_clipping"]
    return recipe, run


def _randp_case(spec: dict, result: dict, save) -> None:
    from benchmarks import step_speed
    from dpjax.data import sources
    from dpjax.train import loop

    end = spec["deadline"]
    recipe, run = _randp_configs(spec)
    result["config"] = f"{RANDP_CONFIG}:eps=1" + (",runlocal=True (smaller)" if spec["smoke"]
                                                  else "")
    result["settings"] = dict(batch_size=run.batch_size, augmult=run.augmult,
                              micro_batch_size=run.micro_batch_size, model=run.model.name,
                              model_dtype=run.model.dtype, clipping=run.privacy.clipping,
                              head_steps_timed_run=run.phases.head_steps,
                              pretrain_batch_size=recipe.pretrain.batch_size)
    notes = result["notes"]
    if run.privacy.clipping != recipe.privacy.clipping:
        notes.append(f"privacy.clipping={run.privacy.clipping} instead of the recipe's "
                     f"{recipe.privacy.clipping} (--randp-clipping)")
    _stub_tensorboard_if_missing(notes)

    # Data: the zip (the `folder` source), or synthetic images of the same shape.
    t0 = time.perf_counter()
    zip_path = spec.get("zip") or ""
    zip_path = zip_path if not zip_path or os.path.isabs(zip_path) else \
        os.path.join(REPO, zip_path)
    data = None
    if zip_path and os.path.isfile(zip_path):
        run.dataset.name, run.dataset.path = "folder", zip_path
        try:
            data = sources.load(run.dataset)
            shown = os.path.relpath(zip_path, REPO) if zip_path.startswith(REPO) else zip_path
            description = (f"{shown} ({len(data.train):,} train / {len(data.test):,} test "
                           f"images, {'x'.join(map(str, data.train.image_shape))})")
            source = "zip"
        except Exception as e:
            notes.append(f"reading {zip_path} failed ({step_speed.error_text(e)}): synthetic "
                         "images instead")
    elif zip_path:
        notes.append(f"{zip_path} not found: synthetic images instead (same shapes; the "
                     "step times do not depend on the pixels, the load time does)")
    if data is None:
        n_train, n_test = (256, 64) if spec["smoke"] else (50_000, 10_000)
        data = _synthetic_cifar(n_train, n_test)
        source = "synthetic"
        description = (f"SYNTHETIC uint8 images, {n_train:,} train / {n_test:,} test, "
                       "32x32x3, 10 classes (the zip was not used)")
    result["data"] = dict(source=source, path=zip_path or None, description=description,
                          load_s=time.perf_counter() - t0)
    save()

    # Phase I: its step, compiled and timed alone.
    result["phase1"] = _time_phase1(recipe, spec["smoke"])
    save()

    # Phases II and III: the real trainer, Phase I skipped.
    head, n3 = run.phases.head_steps, spec.get("randp_steps") or (3 if spec["smoke"] else 10)
    hint = (spec.get("hints") or {}).get("k16") or {}
    k16_s = hint.get(run.privacy.clipping)
    est_step = (k16_s * run.batch_size / spec["hints"]["k16_batch"] if k16_s
                else (1.0 if spec["smoke"] else 20.0))
    result["private"] = dict(requested_steps=head + 1 + n3, estimated_step_s=est_step)
    stop_in = end - time.time() - (1.5 * est_step + 15.0)
    workdir = tempfile.mkdtemp(prefix="gpu_check_randp_")
    timer = threading.Timer(max(stop_in, 0.0), os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    t0 = time.perf_counter()
    outcome = "finished the requested steps"
    try:
        loop.train_and_evaluate(run, os.path.join(workdir, "run"), data=data,
                                max_steps_this_run=head + 1 + n3)
    except getattr(loop, "Preempted", _Stop):  # the loop's "stopped by a signal"
        outcome = "stopped by the time budget (SIGTERM, as on preemption) after a step"
    except _Stop as e:
        outcome = f"stopped before the trainer's first step: {e}"
    except Exception as e:
        traceback.print_exc()
        outcome = f"trainer error: {step_speed.error_text(e)}"
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    trainer_s = time.perf_counter() - t0
    records = []
    metrics_path = os.path.join(workdir, "run", "metrics.jsonl")
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    _private_times(result, records, run, head, trainer_s, outcome)
    result["private"]["device_peak_bytes"] = step_speed.device_memory()["peak"]
    shutil.rmtree(workdir, ignore_errors=True)
    _projection(result, recipe, spec)
    ok = result["projection"].get("total_s") is not None and outcome.startswith("finished")
    result["status"] = "ok" if ok else ("partial" if result["projection"].get("total_s")
                                        else "error")
    if not ok:
        result["error"] = outcome


def _time_phase1(recipe, smoke: bool) -> dict:
    """Seconds per Phase I step: `pretrain.make_train_step` (what `pretrain.pretrain` runs)
    after one warm-up step, in groups of steps dispatched back to back (median of groups)."""
    import jax
    import jax.numpy as jnp

    from benchmarks import step_speed
    from dpjax.randp import pretrain

    p1 = dict(batch_size=recipe.pretrain.batch_size, recipe_steps=recipe.pretrain.steps,
              families=list(recipe.pretrain.families))
    model, tx = pretrain.build(recipe)
    res, ch = recipe.pretrain.resolution, recipe.pretrain.channels
    params = model.init(jax.random.key(0), jnp.zeros((2, res, res, ch), jnp.float32))["params"]
    state = [params, tx.init(params), None]
    train_step = pretrain.make_train_step(model, tx, recipe)
    key, done = jax.random.key(1), [0]

    def run_steps(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            state[:] = train_step(state[0], state[1], jax.random.fold_in(key, done[0]))
            done[0] += 1
        jax.block_until_ready(state)
        return (time.perf_counter() - t) / n

    p1["compile_and_first_step_s"] = run_steps(1)
    first = run_steps(1)
    group = 2 if smoke else max(1, min(20, round(1.0 / max(first, 1e-3))))
    stop = time.time() + (5.0 if smoke else 15.0)
    per_step = [run_steps(group) for _ in range(2 if smoke else 3) if time.time() < stop]
    timed = group * len(per_step)
    if not per_step:
        per_step, timed = [first], 1
    p1.update(seconds_per_step=statistics.median(per_step), groups=per_step,
              group_size=group, timed_steps=timed,
              device_peak_bytes=step_speed.device_memory()["peak"],
              loss_finite=bool(math.isfinite(float(state[2]))))
    return p1


def _private_times(result, records, run, head, trainer_s, outcome) -> None:
    """Per-step seconds from the trainer's metrics (B / examples_per_s of each step)."""
    secs = {int(r["step"]): run.batch_size / r["examples_per_s"] for r in records
            if r.get("examples_per_s")}
    # Step 1 and step head + 1 include the compilation of their phase's functions.
    phase2 = [secs[s] for s in sorted(secs) if 2 <= s <= head]
    phase3 = [secs[s] for s in sorted(secs) if s >= head + 2]
    result["private"].update(
        outcome=outcome, steps_run=max(secs, default=0), trainer_wall_s=trainer_s,
        first_step_s=secs.get(1), first_phase3_step_s=secs.get(head + 1),
        phase2=dict(timed_steps=len(phase2), step_s=phase2,
                    seconds_per_step=statistics.median(phase2) if phase2 else None),
        phase3=dict(timed_steps=len(phase3), step_s=phase3,
                    seconds_per_step=statistics.median(phase3) if phase3 else None))


def _projection(result, recipe, spec) -> None:
    p1, pr = result["phase1"], result["private"]
    t1 = p1.get("seconds_per_step")
    t2, t3 = pr["phase2"]["seconds_per_step"], pr["phase3"]["seconds_per_step"]
    head, total = recipe.phases.head_steps, recipe.num_steps
    proj = result["projection"] = {}
    if t1 is None or t3 is None:
        result["notes"].append("no projection: Phase I or Phase III has no timed step")
        return
    if t2 is None:
        t2 = t3
        result["notes"].append("Phase II had no timed step: projected at Phase III's step "
                               "time (an upper bound: Phase II trains only the head)")
    # The trainer's time not explained by its steady-state steps: setup, σ calibration,
    # compilations, the final checkpoint.
    run_head = min(pr["steps_run"], result["settings"]["head_steps_timed_run"])
    fixed_trainer = max(0.0, pr["trainer_wall_s"] - t2 * run_head
                        - t3 * max(0, pr["steps_run"] - run_head))
    fixed = result["data"]["load_s"] + p1["compile_and_first_step_s"] + fixed_trainer
    proj.update(
        phase1=dict(recipe_steps=recipe.pretrain.steps, seconds=t1 * recipe.pretrain.steps),
        phase2=dict(recipe_steps=head, seconds=t2 * head),
        phase3=dict(recipe_steps=total - head, seconds=t3 * (total - head)),
        fixed_s=fixed, fixed_trainer_s=fixed_trainer)
    proj["total_s"] = (proj["phase1"]["seconds"] + proj["phase2"]["seconds"]
                       + proj["phase3"]["seconds"] + fixed)
    hint = (spec.get("hints") or {}).get("k16") or {}
    if result["settings"]["clipping"] == "vmap" and hint.get("fast") and hint.get("vmap"):
        ratio = hint["fast"] / hint["vmap"]
        proj["fast_over_vmap"], proj["fast_over_vmap_from"] = ratio, spec["hints"]["k16_case"]
        proj["fast_estimate_total_s"] = proj["total_s"] - (1 - ratio) * (
            proj["phase2"]["seconds"] + proj["phase3"]["seconds"])


def _stub_tensorboard_if_missing(notes: list) -> None:
    """The trainer's MetricWriter imports tensorboardX; where it is missing or broken
    (the device image has no tensorboardX), a no-op stand-in (metrics.jsonl is unaffected)."""
    try:
        from tensorboardX import SummaryWriter

        d = tempfile.mkdtemp(prefix="gpu_check_tb_")
        SummaryWriter(d).close()
        return
    except Exception as e:
        import types

        from benchmarks import step_speed

        class SummaryWriter:
            def __init__(self, *a, **k):
                pass

            def add_scalar(self, *a, **k):
                pass

            flush = close = add_scalar

        sys.modules["tensorboardX"] = types.SimpleNamespace(SummaryWriter=SummaryWriter)
        notes.append(f"tensorboardX unusable ({step_speed.error_text(e)}): TensorBoard "
                     "output stubbed out for this run")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, CI)")
    parser.add_argument("--out", default="", help="output folder (default: $OUT, else "
                        "runs/gpu_check)")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="wall-clock budget in seconds (default 450; a case overrunning "
                        "the end is killed at most 30 s later)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="full sizes even where JAX finds no GPU (else: stop at once)")
    parser.add_argument("--zip", default=None, help=f"CIFAR-10 image-folder zip (default "
                        f"{DEFAULT_ZIP}; none in --smoke: synthetic images)")
    parser.add_argument("--site", default=DEFAULT_SITE, help="extra packages folder, "
                        "appended to sys.path if it exists")
    parser.add_argument("--cases", default="", help="comma-separated case names (default all)")
    parser.add_argument("--randp-steps", type=int, default=0,
                        help="timed Phase III steps (default 10; 3 with --smoke)")
    parser.add_argument("--randp-clipping", default="recipe", choices=("recipe", "vmap", "fast"))
    parser.add_argument("--randp-head-steps", type=int, default=None,
                        help="Phase II steps in the timed run: 0 (default) projects Phase II "
                        "at Phase III's step time; 2 times one (default 2 with --smoke)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return
    if args.zip is None:
        args.zip = "" if args.smoke else DEFAULT_ZIP
    if args.randp_head_steps is None:
        args.randp_head_steps = 2 if args.smoke else 0
    run_all(args)


if __name__ == "__main__":
    main()
