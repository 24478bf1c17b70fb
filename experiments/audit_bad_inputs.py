"""The bad-input audit: run.py against bad configs, data files, checkpoints, workdirs and
signals, as a new user would meet them, each judged by what the user sees.

  python experiments/audit_bad_inputs.py --out=experiments/results/bad_inputs.md

Each case runs ``python run.py`` in a subprocess (one CPU device) and passes when the
outcome is the one promised: a rejected input exits non-zero with one ``error: ...`` line
naming the problem and no traceback, and writes nothing; a recoverable fault (a damaged
checkpoint, a dead process's lock, a signal) ends in a finished run whose test metrics equal
an uninterrupted run's. A Markdown table of every case and its verdict is written to --out
(and the JSON lines beside it); the exit status is the number of failed cases.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

ROOT = pathlib.Path(__file__).resolve().parent.parent
_OUT = flags.DEFINE_string(
    "out", str(ROOT / "experiments" / "results" / "bad_inputs.md"), "Markdown report."
)
_ONLY = flags.DEFINE_string("only", "", "Run only the cases whose name contains this.")

TINY = [
    "--config=configs/ecommerce.py:smoke",
    "--config.data.num_impressions=4000",
    "--config.data.num_users=120",
    "--config.data.num_items=80",
    "--config.train.batch_size=64",
    "--config.train.num_steps=40",
    "--config.train.eval_every=10",
    "--config.train.checkpoint_every=10",
    "--config.train.patience=100",
]
MOVIELENS = ["--config=configs/movielens.py:smoke", "--config.train.num_steps=10"]


@dataclasses.dataclass
class Case:
    name: str
    category: str
    flags: list[str]
    expect: str  # "error: <text>" (rejected) or "recovered: <text in the log>"
    prepare: Callable[[pathlib.Path], None] | None = None  # given the workdir
    base: list[str] = dataclasses.field(default_factory=lambda: list(TINY))


def _run(args: list[str], workdir: pathlib.Path, timeout: int = 600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "run.py", *args, f"--workdir={workdir}", "--compilation_cache="]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# -- preparations ------------------------------------------------------------------------

REFERENCE: dict[str, pathlib.Path] = {}  # a finished tiny run, copied into checkpoint cases


def _finished_copy(workdir: pathlib.Path) -> None:
    shutil.copytree(REFERENCE["run"], workdir, dirs_exist_ok=True)
    (workdir / "results.json").unlink()


def _array_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in step_dir.rglob("*") if p.is_file() and "ocdbt.process" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def _flip(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _latest(workdir: pathlib.Path) -> pathlib.Path:
    steps = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    return max(steps, key=lambda p: int(p.name))


def _damage(how: str, where: str = "latest") -> Callable[[pathlib.Path], None]:
    def prepare(workdir: pathlib.Path) -> None:
        _finished_copy(workdir)
        targets = {
            "latest": [_latest(workdir)],
            "all": [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()],
            "best": [max((workdir / "best").iterdir(), key=lambda p: p.name)],
        }[where]
        for step_dir in targets:
            if how == "flip":
                _flip(_array_file(step_dir))
            elif how == "truncate":
                path = _array_file(step_dir)
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
            elif how == "delete":
                _array_file(step_dir).unlink()
            elif how == "meta":
                (step_dir / "meta" / "metadata").write_text("{not json")
            elif how == "empty":
                shutil.rmtree(step_dir)
                step_dir.mkdir()

    return prepare


def _nan_best(workdir: pathlib.Path) -> None:
    """An earlier attempt's best checkpoint of NaN parameters after the last checkpoint."""
    import jax
    import numpy as np

    from mtl_jax.checkpoint import Checkpointer

    _finished_copy(workdir)
    latest = int(_latest(workdir).name)
    shutil.rmtree(_latest(workdir))
    ckpt = Checkpointer(workdir)
    params = ckpt.restore_best(None)
    ckpt.save_best(latest, jax.tree.map(lambda a: np.full(a.shape, np.nan, a.dtype), params))
    ckpt.wait()
    ckpt.close()


def _movielens_files(ratings: str, users: str | None = None, items: str | None = None):
    def prepare(workdir: pathlib.Path) -> None:
        data = workdir.parent / f"{workdir.name}_data"
        data.mkdir(parents=True, exist_ok=True)
        flags = ["0"] * 19
        (data / "u.data").write_text(ratings)
        (data / "u.user").write_text(users or "1|24|M|technician|85711\n2|53|F|other|94043\n")
        (data / "u.item").write_text(
            items
            or "".join(
                f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{'|'.join(flags)}\n" for i in (1, 2)
            )  # fmt: skip
        )

    return prepare


HOLDER = (
    "import sys,time\nfrom mtl_jax.workdir import WorkdirLock\nwith WorkdirLock(sys.argv[1]):\n"
)
HOLDER += "    print('locked', flush=True); time.sleep(600)\n"


def _cases() -> list[Case]:
    c: list[Case] = []
    bad_values = [
        ("optim.learning_rate=inf", "config.optim.learning_rate: must be a finite number"),
        ("optim.learning_rate=nan", "config.optim.learning_rate: must be a finite number"),
        ("optim.learning_rate=-0.1", "config.optim.learning_rate: must lie in (0, inf)"),
        ("optim.b1=5", "config.optim.b1: must lie in [0, 1)"),
        ("optim.b2=1", "config.optim.b2: must lie in [0, 1)"),
        ("optim.weight_decay=-1", "config.optim.weight_decay: must lie in [0, inf)"),
        ("optim.grad_clip_norm=nan", "config.optim.grad_clip_norm: must be a finite number"),
        ("optim.embedding_learning_rate=0", "config.optim.embedding_learning_rate: must lie"),
        ("balancing.weights.click=nan", "config.balancing.weights.click: must be a finite"),
        ("balancing.weights.click=-2", "config.balancing.weights.click: must lie in [0, inf)"),
        ("task_loss.click.pos_weight=nan", "config.task_loss.click.pos_weight: must be a fin"),
        ("task_loss.click.pos_weight=0", "config.task_loss.click.pos_weight: must lie in"),
        ("task_loss.click.negative_rate=2", "config.task_loss.click.negative_rate: must lie"),
        ("task_loss.click.focal_gamma=-1", "config.task_loss.click.focal_gamma: must lie"),
        ("data.val_fraction=0", "config.data.val_fraction: must lie in (0, 1)"),
        ("data.test_fraction=1", "config.data.test_fraction: must lie in (0, 1)"),
        ("data.num_users=0", "config.data.num_users: must lie in [1, inf)"),
        ("data.click_rate=1.5", "config.data.click_rate: must lie in (0, 1)"),
        ("data.task_correlation=3", "config.data.task_correlation: must lie in [-1, 1]"),
        ("data.num_categories=500", "config.data (ecommerce): num_categories must be <="),
        ("model.trunk=transformer", "config.model.trunk: unknown trunk 'transformer'"),
        ("model.dropout=1", "config.model.dropout: must lie in [0, 1)"),
        ("model.num_experts=0", "config.model.num_experts: must be >= 1"),
        ("train.batch_size=0", "config.train.batch_size: must be >= 1"),
        ("train.checkpoint_every=15", "config.train.checkpoint_every: must be a positive"),
        ("train.early_stopping_metric=click/rmse", "config.train.early_stopping_metric:"),
        ("tasks=('click','like')", "config.tasks: unknown task 'like'"),
        ("input_features=('user_id','colour')", "config.input_features: unknown feature"),
        ("balancing.method=pcgradd", "config.balancing.method: unknown method 'pcgradd'"),
        ("balancing.method=pcgrad", None),  # valid: trains
        ("guards.divergence_factor=0.5", "config.guards.divergence_factor: must be 0 (off)"),
        ("mesh.num_devices=64", "config.mesh: num_devices=64 but 1 devices exist"),
        ("model.num_expert=8", "unknown config key config.model.num_expert"),
        ("trian.num_steps=8", "Did you mean 'train'?"),
    ]
    for flag, expected in bad_values:
        expect = f"error: {expected}" if expected else "recovered: test metrics"
        c.append(Case(f"--config.{flag}", "config value", [f"--config.{flag}"], expect))
    static = ["--config.tasks=('click','purchase')", "--config.balancing.method=static"]
    c.append(Case("static weights, fewer tasks", "config value", static, "recovered: test metrics"))
    for name, text, expected in [
        ("no get_config", "x = 1\n", "defines no get_config"),
        ("syntax error", "def get_config(:\n", "does not load: SyntaxError"),
        ("import error", "import no_such_module\n", "does not load: ModuleNotFoundError"),
        ("returns a dict", "def get_config(arg=None):\n    return {}\n", "returned dict"),
    ]:
        path = pathlib.Path(tempfile.gettempdir()) / f"audit_{name.replace(' ', '_')}.py"
        path.write_text(text)
        c.append(Case(f"config file: {name}", "config file", [], f"error: --config: {path}",
                      base=[f"--config={path}"]))  # fmt: skip
        del expected
    c.append(Case("config file: missing", "config file", [], "error: --config: no config file",
                  base=["--config=configs/nope.py"]))  # fmt: skip
    c.append(Case("config variant: unknown", "config file", [], "error: --config: configs/ecom",
                  base=["--config=configs/ecommerce.py:bogus"]))  # fmt: skip
    good_ratings = "1\t1\t4\t5\n1\t2\t3\t6\n2\t1\t5\t7\n"
    data_cases = [
        ("NaN rating", "1\t1\tnan\t5\n", None, None, "u.data:1: rating 'nan' is not a finite"),
        ("rating 1e9", "1\t1\t1e9\t5\n", None, None, "u.data:1: rating '1e9' outside 1-5"),
        ("item id -5", "1\t-5\t4\t5\n", None, None, "u.data:1: item id '-5' must be >= 1"),
        ("item id 99999", "1\t99999\t4\t5\n", None, None, "item id 99999 has no row in u.item"),
        ("user without profile", "9\t1\t4\t5\n", None, None, "user id 9 has no row in u.user"),
        ("short row", "1\t1\t4\n", None, None, "u.data:1: expected 4 fields"),
        ("text in a number", "1\tx\t4\t5\n", None, None, "u.data:1: item id 'x' is not a number"),
        ("duplicate user", good_ratings, "1|24|M|a|1\n1|30|F|b|2\n2|40|M|c|3\n", None,
         "u.user:2: user id 1 is listed twice"),
        ("bad gender", good_ratings, "1|24|X|a|1\n2|30|F|b|2\n", None, "gender 'X'"),
        ("bad genre flag", good_ratings, None, "1|M (1995)|x||u|" + "|".join(["7"] * 19) + "\n",
         "u.item:1: genre flags must be 0 or 1"),
    ]  # fmt: skip
    for name, ratings, users, items, expected in data_cases:
        c.append(Case(f"movielens: {name}", "data file", [], f"error: {expected}",
                      prepare=_movielens_files(ratings, users, items),
                      base=[*MOVIELENS, "--config.data.data_dir=DATA"]))  # fmt: skip
    c.append(Case("movielens: data_dir missing", "data file", [],
                  "error: config.data.data_dir: '/no/such/dir' is not a directory",
                  base=[*MOVIELENS, "--config.data.data_dir=/no/such/dir"]))  # fmt: skip
    c.append(Case("movielens: data_dir incomplete", "data file", [], "error: data_dir",
                  prepare=lambda w: (w.parent / f"{w.name}_data").mkdir(parents=True),
                  base=[*MOVIELENS, "--config.data.data_dir=DATA"]))  # fmt: skip
    recovered = "recovered: test metrics equal"
    for how in ("flip", "truncate", "delete", "meta", "empty"):
        c.append(Case(f"latest checkpoint: {how}", "checkpoint", [], recovered,
                      prepare=_damage(how)))  # fmt: skip
    c.append(Case("every checkpoint flipped", "checkpoint", [], recovered,
                  prepare=_damage("flip", "all")))  # fmt: skip
    c.append(Case("best checkpoint flipped", "checkpoint", [], "recovered: instead of the damaged",
                  prepare=_damage("flip", "best")))  # fmt: skip
    c.append(Case("stale NaN best from a broken attempt", "checkpoint", [], recovered,
                  prepare=_nan_best))  # fmt: skip
    c.append(Case("config changed since the checkpoint", "checkpoint",
                  ["--config.model.trunk_hidden=(16,)"], "error: the checkpoint at step",
                  prepare=_finished_copy))  # fmt: skip
    c.append(
        Case(
            "second writer on a live run's workdir",
            "workdir",
            [],
            "error: workdir",
            prepare=lambda w: None,
        )
    )  # holder started by the runner
    c.append(Case("lock left by a killed run", "workdir", [], recovered, prepare=lambda w: None))
    c.append(Case("SIGTERM mid-run, then rerun", "signal", [], recovered))
    c.append(Case("SIGKILL mid-run, then rerun", "signal", [], recovered))
    c.append(Case("divergence (learning rate 1e30)", "training",
                  ["--config.optim.learning_rate=1e30", "--config.guards.max_skipped_steps=3"],
                  "error: the loss"))  # fmt: skip
    return c


def _judge(case: Case, result, workdir: pathlib.Path) -> tuple[bool, str]:
    lines = result.stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    if "Traceback" in result.stderr:
        return False, "traceback: " + last
    kind, _, text = case.expect.partition(": ")
    if kind == "error":
        if result.returncode == 0:
            return False, "accepted"
        ok = last.startswith("error: ") and text in last
        return ok, f"exit {result.returncode}: {last}"
    if result.returncode != 0:
        return False, f"exit {result.returncode}: {last}"
    results = json.loads((workdir / "results.json").read_text())
    if text == "test metrics equal":
        reference = json.loads((REFERENCE["run"] / "results.json").read_text())
        same = results["test"] == reference["test"]
        return same, "finished; test metrics " + ("equal the reference" if same else "DIFFER")
    if text == "test metrics":
        return True, f"finished; best step {results['best_step']}"
    ok = text in result.stderr
    return ok, "finished; " + ("log says so" if ok else f"log lacks {text!r}")


def _signal_case(
    case: Case, args: list[str], workdir: pathlib.Path, tmp: pathlib.Path
) -> tuple[bool, str]:
    """Interrupts a run once it has a checkpoint at step 20, reruns it, and compares its
    test metrics with an uninterrupted run of the same command."""
    long = [*args, "--config.train.num_steps=200", "--config.train.patience=1000"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "run.py", *long, f"--workdir={workdir}", "--compilation_cache="]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpts = workdir / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 20 for p in ckpts.iterdir()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM if "SIGTERM" in case.name else signal.SIGKILL)
    proc.wait()
    first = f"first run exit {proc.returncode}; "
    result = _run(long, workdir)
    if result.returncode != 0 or "resumed from step" not in result.stderr:
        return False, first + f"rerun exit {result.returncode}: {result.stderr[-300:]}"
    straight = tmp / f"{workdir.name}_straight"
    _run(long, straight)
    a = json.loads((workdir / "results.json").read_text())["test"]
    b = json.loads((straight / "results.json").read_text())["test"]
    return a == b, first + "rerun resumed; test metrics " + ("equal" if a == b else "DIFFER")


def _run_case(case: Case, tmp: pathlib.Path) -> tuple[bool, str]:
    workdir = tmp / case.name.replace(" ", "_").replace("/", "_")[:60]
    if case.prepare is not None:
        case.prepare(workdir)
    data = workdir.parent / f"{workdir.name}_data"
    args = [a.replace("=DATA", f"={data}") for a in case.base] + case.flags
    if case.category == "workdir":
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
        holder.stdout.readline()
        if "killed" in case.name:
            holder.kill()
            holder.wait()
            _finished_copy(workdir)
        try:
            result = _run(args, workdir)
        finally:
            holder.kill()
            holder.wait()
        return _judge(case, result, workdir)
    if case.category == "signal":
        return _signal_case(case, args, workdir, tmp)
    result = _run(args, workdir)
    return _judge(case, result, workdir)


def main(argv: list[str]) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's chatter in the preparations
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mtl_jax_audit_"))
    reference = tmp / "reference"
    print("training the reference run ...", flush=True)
    result = _run(TINY, reference)
    if result.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{result.stderr[-3000:]}")
    REFERENCE["run"] = reference
    rows = []
    cases = [c for c in _cases() if _ONLY.value in c.name]
    for i, case in enumerate(cases, start=1):
        start = time.perf_counter()
        try:
            ok, seen = _run_case(case, tmp)
        except Exception as e:  # noqa: BLE001 - the audit reports its own failures too
            ok, seen = False, f"audit error: {type(e).__name__}: {e}"
        seconds = time.perf_counter() - start
        rows.append({"case": case.name, "category": case.category, "expected": case.expect,
                     "seen": seen, "pass": ok, "seconds": round(seconds, 1)})  # fmt: skip
        print(f"[{i}/{len(cases)}] {'PASS' if ok else 'FAIL'} {case.name}: {seen}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = [r for r in rows if not r["pass"]]
    from mtl_jax import reporting

    lines = [
        "# Bad-input audit",
        "",
        f"`python experiments/audit_bad_inputs.py` at commit {reporting.git_commit()}: "
        f"{len(rows) - len(failed)} of {len(rows)} cases pass.",
        "",
        "| case | kind | expected | seen | pass |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        seen = r["seen"].replace("|", "\\|")[:160]
        expected = r["expected"].replace("|", "\\|")
        lines.append(f"| {r['case']} | {r['category']} | {expected} | {seen} | "
                     f"{'yes' if r['pass'] else '**no**'} |")  # fmt: skip
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed; report in {out}")
    sys.exit(len(failed))


if __name__ == "__main__":
    app.run(main)
