"""Every user mistake: exit status 2, one line `dpjax: error: ...`, no traceback, nothing written.

One table over the categories of mistakes (config files, workdirs, resumes, settings
that used to fail late, contradictory or non-finite settings, accounting at extreme
settings, subcommand arguments), each run through the CLI in-process
(`dpjax.cli.main`; `tests/train/test_loop.py` checks the same in a separate process).
Then what must *work* despite a fault: a stale lock, a corrupt latest
checkpoint, SIGINT, a full disk (one line, the last checkpoint kept), an empty test
split (strict JSON), `dpjax account` without data and at large ε.
"""

import contextlib
import fcntl
import glob
import hashlib
import json
import math
import os
import shutil
import signal

import numpy as np
import pytest

from dpjax import cli
from dpjax.train import checkpoint as checkpoint_lib
from dpjax.train import loop
from tests.helpers import REPO

# A 6-step DP-SGD run of a narrow MLP on the digits (1437 training images).
RUN = ["--config", "configs/quickstart.py:steps=6", "--config.model.name=mlp",
       "--config.model.kwargs.width=8", "--config.progress_bar=False", "--config.eval_every=0",
       "--config.checkpoint_every=2", "--config.log_every=2", "--config.seed=3"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fails the test instead of hanging (no timing assertion: generous on purpose)."""
    def expire(signum, frame):
        raise AssertionError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(path) -> dict | str | None:
    """Every file under `path` with a hash of its contents (None: `path` does not exist)."""
    path = str(path)
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), path) + "/"] = "dir"
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return out


def _run(argv, capsys) -> tuple[int, str, str]:
    with _deadline(240):
        code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line(code, err, match):
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpjax: error: "), err
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    """A run stopped after 4 of its 6 steps (checkpoints 2 and 4)."""
    workdir = tmp_path_factory.mktemp("partial") / "run"
    assert cli.main(["train", "--workdir", str(workdir), "--max_steps_this_run", "4", *RUN]) == 0
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    return workdir


def _copy_of(partial_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(partial_run, target)
    return target


def _write_npz(path, num_train=80, num_test=20, seed=0, size=8):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", num_train), ("val", 0), ("test", num_test)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
    np.savez(path, **arrays)


def _npz_run(path):
    return ["--config", "configs/quickstart.py:steps=4", "--config.dataset.name=npz",
            f"--config.dataset.path={path}", "--config.privacy.delta=1e-3",
            "--config.batch_size=16", "--config.micro_batch_size=16",
            "--config.model.name=mlp", "--config.model.kwargs.width=8",
            "--config.progress_bar=False", "--config.eval_every=0",
            "--config.checkpoint_every=2", "--config.seed=3"]


# --- the table --------------------------------------------------------------------------

def _config_file(body: str, name: str = "bad.py"):
    def setup(tmp_path):
        (tmp_path / name).write_text(body)
        return ["train", "--workdir", tmp_path / "w", "--config", tmp_path / name]
    return setup


def _train(*extra, max_steps=None):
    def setup(tmp_path):
        steps = ["--max_steps_this_run", max_steps] if max_steps is not None else []
        return ["train", "--workdir", tmp_path / "w", *steps, *RUN, *extra]
    return setup


def _on_partial(change, *extra):
    """A case on a copy of the partial run, after `change(workdir)`."""
    def setup(tmp_path, partial_run):
        workdir = _copy_of(partial_run, tmp_path)
        change(workdir)
        return ["train", "--workdir", workdir, *RUN, *extra]
    setup.needs_partial = True
    return setup


def _command(*argv):
    return lambda tmp_path: [a.format(tmp=tmp_path) for a in argv]


def _images_too_small(tmp_path):
    _write_npz(tmp_path / "tiny.npz", size=1)
    return ["train", "--workdir", tmp_path / "w", *_npz_run(tmp_path / "tiny.npz"),
            "--config.model.name=small_cnn"]


def _workdir_is_a_file(tmp_path):
    (tmp_path / "w").write_text("not a directory")
    return ["train", "--workdir", tmp_path / "w", *RUN]


def _corrupt(name, text):
    return lambda workdir: (workdir / name).write_text(text)


CASES = {
    # Config files that fail to run or return no config.
    "config_name_error": (_config_file("def get_config(arg=None):\n    return undefined\n"),
                          "NameError"),
    "config_raises": (_config_file("raise RuntimeError('broken at import')\n"),
                      "RuntimeError: broken at import"),
    "config_syntax_error": (_config_file("def get_config(arg=None)\n"), "SyntaxError"),
    "config_returns_none": (_config_file("def get_config(arg=None):\n    return None\n"),
                            "returned NoneType"),
    "config_returns_dict": (_config_file("def get_config(arg=None):\n    return {}\n"),
                            "returned dict"),
    "config_no_get_config": (_config_file("X = 1\n"), "no get_config"),
    "config_not_py": (_config_file("def get_config(arg=None):\n    pass\n", "cfg.txt"),
                      "not a Python file"),
    "config_missing": (_command("train", "--workdir", "{tmp}/w", "--config", "configs/nope.py"),
                       "does not exist"),
    "config_unknown_arg": (_command("train", "--workdir", "{tmp}/w", "--config",
                                    "configs/quickstart.py:epz=1"), "epz"),
    "config_unknown_field": (_train("--config.batchsize=3"), "batchsize"),
    "variant_contradiction": (_command("account", "--config", "configs/medical_pneumonia.py:"
                                       "path=x,mode=dpsgd,sigma=1,eps=2"), "both given"),
    # Workdirs.
    "workdir_is_a_file": (_workdir_is_a_file, "is a file"),
    "workdir_empty": (_command("train", "--workdir", "", *RUN), "--workdir=''"),
    "workdir_unwritable": (_command("train", "--workdir", "/proc/dpjax-no/w", *RUN),
                           "cannot be created"),
    "resume_config_json_missing": (_on_partial(lambda w: os.remove(w / "config.json")),
                                   "config.json is missing"),
    "resume_config_json_corrupt": (_on_partial(_corrupt("config.json", "{not json")),
                                   "config.json is unreadable"),
    "resume_config_json_not_object": (_on_partial(_corrupt("config.json", "[1, 2]")),
                                      "not a JSON object"),
    "resume_changed_config": (_on_partial(lambda w: None, "--config.privacy.clip_norm=2"),
                              "different config"),
    "resume_corrupt_seed": (_on_partial(_corrupt("private/seed.json", "{")), "seed.json"),
    # Settings that used to fail only after training or after writing.
    "bootstrap_resamples_0": (_train("--config.metrics.bootstrap_resamples=0"),
                              "metrics.bootstrap_resamples=0"),
    "pretrain_log_every_0": (_train("--config.pretrain.log_every=0"), "pretrain.log_every=0"),
    "pretrain_checkpoint_every_0": (_train("--config.pretrain.checkpoint_every=0"),
                                    "pretrain.checkpoint_every=0"),
    "pretrain_resolution_2": (_train("--config.pretrain.resolution=2"), "pretrain.resolution=2"),
    "pretrain_family_unknown": (_train("--config.pretrain.families=('noise',)"),
                                "pretrain.families='noise'"),
    "dataset_mean_not_numeric": (_train("--config.dataset.mean=('a',)"), "dataset.mean"),
    "dataset_mean_unparsable": (_train("--config.dataset.mean=abc"), "dataset.mean"),
    "dataset_std_zero": (_train("--config.dataset.std=(0.0,)"), "dataset.std"),
    "optimizer_momentum": (_train("--config.optimizer.momentum=1.5"), "optimizer.momentum"),
    "ema_decay_one": (_train("--config.ema_decay=1.0"), "ema_decay=1.0"),
    "eval_batch_size_0": (_train("--config.eval_batch_size=0"), "eval_batch_size=0"),
    # Contradictory or non-finite settings.
    "epsilon_and_sigma_both_set": (_train("--config.privacy.noise_multiplier=1.0"),
                                   "privacy.noise_multiplier=0"),
    "sigma_nan": (_train("--config.privacy.target_epsilon=0",
                         "--config.privacy.noise_multiplier=nan"), "noise_multiplier=nan"),
    "epsilon_inf": (_train("--config.privacy.target_epsilon=inf"), "target_epsilon=inf"),
    "epsilon_huge": (_train("--config.privacy.target_epsilon=1e300"), "target_epsilon=1e+300"),
    "clip_norm_nan": (_train("--config.privacy.clip_norm=nan"), "privacy.clip_norm=nan"),
    "delta_nan": (_train("--config.privacy.delta=nan"), "privacy.delta=nan"),
    "delta_above_1_over_n": (_train("--config.privacy.delta=0.01"), "privacy.delta=0.01"),
    "batch_above_n": (_train("--config.batch_size=5000"), "batch_size=5000"),
    "max_steps_negative": (_train(max_steps=-1), "--max_steps_this_run=-1"),
    "max_steps_not_a_number": (_train(max_steps="abc"), "invalid int value: 'abc'"),
    "images_too_small": (_images_too_small, "images of at least 2x2 for model.name='small_cnn'"),
    # Accounting at extreme settings answers or refuses within seconds.
    "account_epsilon_1e300": (_command("account", "--config", "configs/quickstart.py:eps=1e300"),
                              "target_epsilon=1e+300"),
    "account_huge_steps": (_command("account", "--config",
                                    "configs/quickstart.py:steps=1000000000"), "reachable"),
    "account_num_examples_negative": (_command("account", "--config", "configs/quickstart.py",
                                               "--num_examples", "-5"), "--num_examples=-5"),
    # Subcommand arguments.
    "ldp_grid_scales": (_command("ldp_grid", "--config", "configs/quickstart.py", "--out",
                                 "{tmp}/w/g.png", "--scales", "a,b"), "--scales='a,b'"),
    "ldp_grid_num_images": (_command("ldp_grid", "--config", "configs/quickstart.py", "--out",
                                     "{tmp}/w/g.png", "--num_images", "0"), "--num_images=0"),
    "generate_resolution": (_command("generate", "--config", "configs/quickstart.py", "--out",
                                     "{tmp}/w/g.png", "--resolution", "-5"), "--resolution=-5"),
    "generate_per_family": (_command("generate", "--config", "configs/quickstart.py", "--out",
                                     "{tmp}/w/g.png", "--per_family", "0"), "--per_family=0"),
    "audit_canaries": (_command("audit", "--config", "configs/quickstart.py", "--workdir",
                                "{tmp}/w", "--canaries", "1"), "--canaries=1"),
    "audit_control": (_command("audit", "--config", "configs/quickstart.py", "--workdir",
                               "{tmp}/w", "--control", "noise_scale=abc"), "noise_scale='abc'"),
    "evaluate_not_a_run": (_command("evaluate", "--workdir", "{tmp}/w"), "no config.json"),
    "unknown_command": (_command("trian"), "invalid choice: 'trian'"),
    "missing_argument": (_command("train", "--config", "configs/quickstart.py"), "--workdir"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_is_one_line_and_writes_nothing(name, tmp_path, capsys, request):
    setup, match = CASES[name]
    if getattr(setup, "needs_partial", False):
        argv = setup(tmp_path, request.getfixturevalue("partial_run"))
        workdir = argv[argv.index("--workdir") + 1]
    else:
        argv = setup(tmp_path)
        workdir = tmp_path / "w"
    before = _snapshot(workdir)
    code, _, err = _run(argv, capsys)
    _assert_one_line(code, err, match)
    assert _snapshot(workdir) == before, "written before refusing"


def test_second_process_on_a_locked_workdir_refuses_naming_the_first(partial_run, tmp_path,
                                                                       capsys):
    workdir = _copy_of(partial_run, tmp_path)
    # "The first process": a lock taken through another open file (flock locks belong to
    # the open file, so this process's second open() conflicts like another process).
    with open(workdir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.seek(0), held.truncate()
        held.write("dpjax process 4242 on node-7"), held.flush()
        before = _snapshot(workdir)
        code, _, err = _run(["train", "--workdir", workdir, *RUN], capsys)
        assert _snapshot(workdir) == before
    _assert_one_line(code, err, "in use by dpjax process 4242 on node-7")


# --- what must work despite a fault ----------------------------------------------------------

def test_stale_lock_and_corrupt_latest_checkpoint_fall_back(partial_run, tmp_path, capsys,
                                                          caplog):
    workdir = _copy_of(partial_run, tmp_path)
    (workdir / ".lock").write_text("dpjax process 999999 on a-dead-host")  # killed holder
    for path in glob.glob(str(workdir / "checkpoints" / "4" / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            open(path, "wb").write(b"garbage")
    with caplog.at_level("INFO", logger="dpjax"):
        code, out, err = _run(["train", "--workdir", workdir, *RUN], capsys)
    assert code == 0, err
    assert "stale" in caplog.text and "resumed from step 2" in caplog.text
    summary = json.load(open(workdir / "summary.json"))
    assert summary["steps"] == 6 and summary["finished"]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]  # the last two


def test_sigint_saves_like_sigterm(partial_run, tmp_path, capsys, monkeypatch):
    workdir = _copy_of(partial_run, tmp_path)

    def interrupt(point, step):
        if point == "after_step" and step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop, "_test_hook", interrupt)
    code, _, err = _run(["train", "--workdir", workdir, *RUN], capsys)
    assert code == 143 and "Stopped by SIGINT" in err and "Traceback" not in err
    named, meta, step = checkpoint_lib.Checkpointer(str(workdir)).restore_named()
    assert step == 5 and meta["ledger"][0]["steps"] == 5  # the step and its record, together


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(partial_run, tmp_path, capsys,
                                                             monkeypatch):
    workdir = _copy_of(partial_run, tmp_path)
    before = _snapshot(workdir / "checkpoints")

    def no_space(*args, **kwargs):  # what tensorstore reports (not an OSError with ENOSPC)
        raise ValueError("RESOURCE_EXHAUSTED: Error writing local file "
                         f"\"{workdir}/checkpoints/6/state/d/1\": [OS error: No space left]")

    monkeypatch.setattr(checkpoint_lib.ocp.CheckpointManager, "save", no_space)
    code, _, err = _run(["train", "--workdir", workdir, *RUN], capsys)
    _assert_one_line(code, err, "Disk full")
    assert _snapshot(workdir / "checkpoints") == before
    monkeypatch.undo()
    named, meta, step = checkpoint_lib.Checkpointer(str(workdir)).restore_named()
    assert step == 4 and meta["step"] == 4


def test_resume_on_changed_training_data_is_refused(partial_run, tmp_path, capsys):
    # The fingerprint covers the size and every pixel and label of the training set ...
    from dpjax.data.sources import ArrayDataset
    from dpjax.train import workdir as workdir_lib

    images = np.zeros((10, 8, 8, 1), np.uint8)
    labels = np.zeros(10, np.int32)
    prints = set()
    for change in (lambda i, l: None, lambda i, l: i.__setitem__((3, 2, 2, 0), 1),
                   lambda i, l: l.__setitem__(5, 1)):
        i, l = images.copy(), labels.copy()
        change(i, l)
        prints.add(workdir_lib.data_fingerprint(ArrayDataset(i, l)))
    prints.add(workdir_lib.data_fingerprint(ArrayDataset(images[:9], labels[:9])))
    assert len(prints) == 4
    # ... and a resume on data with another fingerprint is refused, writing nothing.
    workdir = _copy_of(partial_run, tmp_path)
    (workdir / "private" / "data.json").write_text(json.dumps({"fingerprint": "0" * 32}))
    before = _snapshot(workdir)
    code, _, err = _run(["train", "--workdir", workdir, *RUN], capsys)
    _assert_one_line(code, err, "different training data")
    assert _snapshot(workdir) == before


def _strict(text):
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_empty_test_split_gives_null_accuracy_in_strict_json(tmp_path, capsys):
    data = tmp_path / "data.npz"
    _write_npz(data, num_test=0)
    workdir = tmp_path / "w"
    code, out, err = _run(["train", "--workdir", workdir, *_npz_run(data)], capsys)
    assert code == 0, err
    summary = _strict(open(workdir / "summary.json").read())
    assert summary["test_accuracy"] is None and summary["num_test"] == 0
    for path in glob.glob(str(workdir / "**" / "*.json"), recursive=True):
        _strict(open(path).read())
    for line in open(workdir / "metrics.jsonl"):
        _strict(line)


def test_account_answers_without_data_and_at_large_epsilon(capsys):
    code, out, err = _run(["account", "--config", "configs/cifar10_wrn16_4.py:eps=1"], capsys)
    assert code == 0, err  # CIFAR-10 is not on this machine: its published N is used
    result = json.loads(out)
    assert result["num_train"] == 50_000 and result["epsilon"] <= 1.0
    assert result["noise_multiplier"] == pytest.approx(9.128, rel=5e-3)
    code, out, err = _run(["account", "--config", "configs/quickstart.py:eps=50",
                           "--num_examples", "1437"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["num_train"] == 1437 and 49 < result["epsilon"] <= 50
    assert math.isfinite(result["epsilon_rdp"])


@pytest.mark.parametrize("call,message", [
    (lambda v: v.probability("privacy.delta", 1.5, fix="lower privacy.delta (it must be below "
                                                      "1/N)"),
     "Expected privacy.delta=1.5 in (0, 1): lower privacy.delta (it must be below 1/N)."),
    (lambda v: v.positive_int("batch_size", 0), "Expected batch_size=0 >= 1 (an integer)."),
    (lambda v: v.positive_finite("privacy.clip_norm", float("nan")),
     "Expected privacy.clip_norm=nan > 0 (a finite number)."),
    (lambda v: v.one_of("privacy.sampling", "random", ("poisson", "shuffle")),
     "Expected privacy.sampling='random' to be one of 'poisson', 'shuffle'."),
    (lambda v: v.integer("ldp.seed", -1, 0, 2 ** 63, high_open=True),
     "Expected ldp.seed=-1 in [0, 2**63) (an integer)."),
])
def test_validators_name_the_field_the_value_the_range_and_the_fix(call, message):
    from dpjax import validate
    from dpjax.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        call(validate)
    assert str(e.value) == message
