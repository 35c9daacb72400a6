"""The TPU pod launcher's commands: printed by --dry-run, and run against a fake gcloud."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from timeouts import scaled_timeout

from scripts import tpu_pod

REPO = Path(__file__).resolve().parent.parent
POD = ["--name", "kobart", "--zone", "us-central2-b", "--project", "my-project"]
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone=us-central2-b", "--project=my-project"]


def dry_run(*args: str) -> list[tuple[str, list[str]]]:
    """(comment, argv) of every command the launcher prints."""
    output = subprocess.run(
        [sys.executable, "-m", "scripts.tpu_pod", *POD, "--dry-run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(output) % 2 == 0 and all(line.startswith("# ") for line in output[::2]), output
    return [
        (comment[2:], shlex.split(command))
        for comment, command in zip(output[::2], output[1::2], strict=True)
    ]


def test_run_creates_sets_up_trains_on_all_workers_and_gathers_logs():
    commands = dry_run("run", "--", "train.workdir=gs://bucket/run 1", "train.max_steps=100")
    argvs = [argv for _, argv in commands]

    assert argvs[0] == [*GCLOUD_TPU, "describe", "kobart", "--format=value(state)", *WHERE]
    assert commands[1][0].endswith("(only if the previous command failed)")
    assert argvs[1] == [
        *GCLOUD_TPU,
        "create",
        "kobart",
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
        *WHERE,
    ]
    pack = argvs[2]
    assert pack[:4] == ["bash", "-o", "pipefail", "-c"]
    assert pack[4].startswith("git ls-files -z --cached --others --exclude-standard -- kobart_flax")
    assert pack[4].endswith("| tar --null --files-from=- -czf /tmp/kobart-flax.tar.gz")
    assert argvs[3] == [
        *GCLOUD_TPU,
        "scp",
        "/tmp/kobart-flax.tar.gz",
        "kobart:~/kobart-flax.tar.gz",
        "--worker=all",
        *WHERE,
    ]
    assert argvs[4][:7] == [*GCLOUD_TPU, "ssh", "kobart", "--worker=all"]
    assert argvs[4][7] == (
        "--command=mkdir -p ~/kobart-flax && tar -xzf ~/kobart-flax.tar.gz -C ~/kobart-flax "
        "&& cd ~/kobart-flax && scripts/setup_env.sh requirements-tpu.txt"
    )
    assert argvs[5] == [
        *GCLOUD_TPU,
        "scp",
        "data/train.tsv",
        "data/test.tsv",
        "kobart:~/kobart-flax/data/",
        "--worker=all",
        *WHERE,
    ]

    train = argvs[6]
    assert train[:7] == [*GCLOUD_TPU, "ssh", "kobart", "--worker=all"] and train[8:] == WHERE
    remote = train[7].removeprefix("--command=")
    assert remote.startswith("cd ~/kobart-flax && mkdir -p logs && set -o pipefail && ")
    run_part, tee = remote.split(" && ")[-1].split(" 2>&1 | ")
    assert tee == "tee logs/train.log"
    # The overrides reach train_flax.py intact, spaces included.
    assert shlex.split(run_part) == [
        ".venv/bin/python",
        "train_flax.py",
        "--config",
        "configs/kobart_base.py",
        "train.workdir=gs://bucket/run 1",
        "train.max_steps=100",
    ]

    logs = argvs[7:]
    assert logs == [
        [
            *GCLOUD_TPU,
            "scp",
            "kobart:~/kobart-flax/logs/train.log",
            f"runs/pod_logs/worker_{worker}.log",
            f"--worker={worker}",
            *WHERE,
        ]
        for worker in range(4)
    ]


def test_detached_training_spot_vm_and_no_data_copy():
    create = dry_run("create", "--spot", "--accelerator-type", "v4-64")[1][1]
    assert create == [
        *GCLOUD_TPU,
        "create",
        "kobart",
        "--accelerator-type=v4-64",
        "--version=tpu-ubuntu2204-base",
        *WHERE,
        "--spot",
    ]

    setup = [argv for _, argv in dry_run("setup", "--data")]
    assert not any("data/train.tsv" in argv for argv in setup)

    ((_, train),) = dry_run("train", "--detach", "--config", "configs/tiny.py")
    remote = train[7].removeprefix("--command=")
    assert "setsid nohup .venv/bin/python train_flax.py --config configs/tiny.py" in remote
    assert remote.endswith("> logs/train.log 2>&1 < /dev/null &")

    ((_, stop),) = dry_run("stop")
    assert stop[7] == "--command=pkill -TERM -f '[t]rain_flax.py' || true"
    ((_, delete),) = dry_run("delete")
    assert delete == [*GCLOUD_TPU, "delete", "kobart", "--quiet", *WHERE]


@pytest.mark.parametrize(("accelerator", "workers"), [("v4-8", 1), ("v4-32", 4), ("v3-128", 16)])
def test_worker_count_from_the_accelerator_type(accelerator, workers):
    assert tpu_pod.workers_of(accelerator) == workers


def test_unknown_accelerator_needs_workers():
    with pytest.raises(ValueError, match="pass --workers"):
        tpu_pod.workers_of("v5litepod-16")


def test_detached_starts_append_to_the_log_under_a_timestamped_header(tmp_path):
    ((_, train),) = dry_run("train", "--detach")
    remote = train[7].removeprefix("--command=")
    # The worker's side, here: a stand-in train_flax.py run that prints its arguments.
    python = tmp_path / "kobart-flax" / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/bash\necho "run $*"\n')
    python.chmod(0o755)
    log = tmp_path / "kobart-flax" / "logs" / "train.log"
    env = {**os.environ, "HOME": str(tmp_path)}

    for start in (1, 2):
        subprocess.run(["/bin/bash", "-c", remote], env=env, check=True)
        deadline = time.monotonic() + scaled_timeout(10)
        while (not log.exists() or log.read_text().count("\nrun ") < start) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)

    header = r"==== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ train_flax.py starts ===="
    run = "run train_flax.py --config configs/kobart_base.py"
    assert re.fullmatch(f"({header}\n{run}\n){{2}}", log.read_text()), log.read_text()


# A fake gcloud (and bash, which packs the code) that records every command it is given and
# plays a TPU VM's life from state.json: create -> CREATING, READY at the next look; a queued
# resource WAITING_FOR_RESOURCES, then ACTIVE with a READY VM; a training command preempted
# while "preemptions" lasts (VM PREEMPTED, queued resource SUSPENDED); delete -> gone.
FAKE = """#!{python}
import json, sys
from pathlib import Path

here = Path(__file__).parent
name, args = Path(sys.argv[0]).name, sys.argv[1:]
state = json.loads((here / "state.json").read_text())
answer, code = None, 0
if name == "gcloud":
    group, verb = args[2], args[3]
    kind = "queued" if group == "queued-resources" else "vm"
    if verb == "describe":
        answer = state[kind]
        if answer is None:
            print(f"ERROR: (gcloud.compute.tpus.{{group}}.describe) NOT_FOUND", file=sys.stderr)
            code = 1
        else:
            print(answer)
        if answer == "CREATING" and kind == "vm":
            state["vm"] = "READY"
        if answer == "WAITING_FOR_RESOURCES":
            state.update(queued="ACTIVE", vm="READY")
    elif verb == "create":
        state[kind] = "CREATING" if kind == "vm" else "WAITING_FOR_RESOURCES"
    elif verb == "delete":
        state.update(vm=None, queued=None)
    elif verb == "ssh" and "train_flax.py" in args[6]:
        if state["preemptions"]:
            state["preemptions"] -= 1
            state.update(vm="PREEMPTED", queued=state["queued"] and "SUSPENDED")
            code = state["preempted_exit"]
        elif state["notices"]:  # stopped on the notice; the VM still reads READY
            state["notices"] -= 1
            code = 75
        else:
            code = state["train_exit"]
with open(here / "calls.jsonl", "a") as calls:
    calls.write(json.dumps({{"argv": [name, *args], "answer": answer}}) + "\\n")
(here / "state.json").write_text(json.dumps(state))
sys.exit(code)
"""


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    """Sets the fake's starting state; returns the (label, argv) of each command it got."""
    directory = tmp_path / "fake_bin"
    directory.mkdir()
    for name in ("gcloud", "bash"):
        (directory / name).write_text(FAKE.format(python=sys.executable))
        (directory / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")

    def start(vm=None, queued=None, preemptions=0, preempted_exit=255, train_exit=0, notices=0):
        state = dict(vm=vm, queued=queued, preemptions=preemptions, notices=notices)
        state.update(preempted_exit=preempted_exit, train_exit=train_exit)
        (directory / "state.json").write_text(json.dumps(state))

    def calls() -> list[tuple[str, list[str]]]:
        lines = (directory / "calls.jsonl").read_text().splitlines()
        return [(label(**json.loads(line)), json.loads(line)["argv"]) for line in lines]

    start.calls = calls
    return start


def label(argv: list[str], answer: str | None) -> str:
    """``describe vm -> READY``, ``create queued``, ``ssh train``, ``scp``, ``pack``."""
    if argv[0] == "bash":
        return "pack"
    kind = {"tpu-vm": "vm", "queued-resources": "queued"}[argv[3]]
    verb = argv[4]
    if verb == "describe":
        return f"describe {kind} -> {answer}"
    if verb == "ssh":
        return "ssh train" if "train_flax.py" in argv[7] else "ssh setup_env.sh"
    return "scp" if verb == "scp" else f"{verb} {kind}"


def launch(tmp_path, *args: str) -> int:
    return tpu_pod.main(
        [*POD, "--poll-seconds", "0.01", "--log-dir", str(tmp_path / "logs"), *args]
    )


SETUP = ["pack", "scp", "ssh setup_env.sh", "scp"]
LOGS = ["scp"] * 4


def test_run_until_done_recreates_a_preempted_spot_vm_and_reruns_training(fake_gcloud, tmp_path):
    fake_gcloud(preemptions=1)

    returncode = launch(tmp_path, "--spot", "run", "--until-done", "--", "train.workdir=gs://b/r")

    assert returncode == 0
    calls = fake_gcloud.calls()
    assert [label for label, _ in calls] == [
        "describe vm -> None",
        "create vm",
        "describe vm -> CREATING",
        "describe vm -> READY",
        *SETUP,
        "ssh train",
        "describe vm -> PREEMPTED",
        "delete vm",
        "create vm",
        "describe vm -> CREATING",
        "describe vm -> READY",
        *SETUP,
        "ssh train",
        "describe vm -> READY",
        *LOGS,
    ]
    argvs = {label: argv for label, argv in calls}
    assert argvs["create vm"] == [
        *GCLOUD_TPU,
        "create",
        "kobart",
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
        *WHERE,
        "--spot",
    ]
    assert argvs["delete vm"] == [*GCLOUD_TPU, "delete", "kobart", "--quiet", *WHERE]
    trains = [argv for label, argv in calls if label == "ssh train"]
    assert trains[0] == trains[1] and "train.workdir=gs://b/r" in trains[0][7]


def test_queued_spot_resource_is_awaited_replaced_when_suspended_and_rerun(fake_gcloud, tmp_path):
    # preempted_exit=0: the run saved on the preemption notice and exited cleanly; only the
    # VM's state tells that it did not finish.
    fake_gcloud(preemptions=1, preempted_exit=0)

    assert launch(tmp_path, "--spot", "--queued", "run", "--until-done") == 0

    calls = fake_gcloud.calls()
    provision = [
        "create queued",
        "describe queued -> WAITING_FOR_RESOURCES",
        "describe queued -> ACTIVE",
    ]
    assert [label for label, _ in calls] == [
        "describe vm -> None",
        "describe queued -> None",
        *provision,
        *SETUP,
        "ssh train",
        "describe vm -> PREEMPTED",
        "describe queued -> SUSPENDED",
        "delete queued",
        *provision,
        *SETUP,
        "ssh train",
        "describe vm -> READY",
        *LOGS,
    ]
    argvs = {label: argv for label, argv in calls}
    queued = ["gcloud", "compute", "tpus", "queued-resources"]
    assert argvs["create queued"] == [
        *queued,
        "create",
        "kobart",
        "--node-id=kobart",
        "--accelerator-type=v4-32",
        "--runtime-version=tpu-ubuntu2204-base",
        "--spot",
        *WHERE,
    ]
    assert argvs["delete queued"] == [*queued, "delete", "kobart", "--force", "--quiet", *WHERE]
    assert argvs["describe queued -> ACTIVE"] == [
        *queued,
        "describe",
        "kobart",
        "--format=value(state.state)",
        *WHERE,
    ]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("READY", []),
        ("CREATING", ["describe vm -> READY"]),
        *[
            (state, ["delete vm", "create vm", "describe vm -> CREATING", "describe vm -> READY"])
            for state in ("PREEMPTED", "TERMINATED", "STOPPED")
        ],
    ],
)
def test_create_reuses_only_a_ready_vm(fake_gcloud, tmp_path, state, expected):
    fake_gcloud(vm=state)

    assert launch(tmp_path, "create") == 0

    labels = [label for label, _ in fake_gcloud.calls()]
    assert labels == [f"describe vm -> {state}", *expected]


def test_until_done_stops_after_max_attempts(fake_gcloud, tmp_path, capsys):
    fake_gcloud(preemptions=3)

    assert launch(tmp_path, "run", "--until-done", "--max-attempts", "2") == 1

    labels = [label for label, _ in fake_gcloud.calls()]
    assert labels.count("ssh train") == 2 and labels[-1] == "describe vm -> PREEMPTED"
    assert capsys.readouterr().err.splitlines() == [
        "tpu_pod: the TPU VM was preempted 2 times (--max-attempts): run again to resume from "
        "the last checkpoint"
    ]


def test_a_training_failure_on_a_ready_vm_is_not_rerun_and_its_logs_are_fetched(
    fake_gcloud, tmp_path
):
    fake_gcloud(vm="READY", train_exit=3)

    assert launch(tmp_path, "run", "--until-done") == 3

    assert [label for label, _ in fake_gcloud.calls()] == [
        "describe vm -> READY",
        *SETUP,
        "ssh train",
        "describe vm -> READY",
        *LOGS,
    ]


def test_a_run_stopped_by_the_notice_is_rerun_while_the_vm_still_reads_ready(fake_gcloud, tmp_path):
    fake_gcloud(vm="READY", notices=1)

    assert launch(tmp_path, "run", "--until-done") == 0

    assert [label for label, _ in fake_gcloud.calls()] == [
        "describe vm -> READY",
        *SETUP,
        "ssh train",
        "describe vm -> READY",  # READY, but the exit status says it stopped early
        *SETUP,
        "ssh train",
        "describe vm -> READY",
        *LOGS,
    ]


def test_the_launcher_knows_train_flax_preemption_exit_status():
    import train_flax

    assert tpu_pod.TRAINING_PREEMPTED_EXIT == train_flax.EXIT_PREEMPTED
