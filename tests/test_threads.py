import os
import subprocess
import sys
import time

from sparsecircuits import threads


def test_threads_for_leaves_a_core_to_each_busy_process():
    assert threads.threads_for(2, 0.0) == 2
    assert threads.threads_for(2, 0.3) == 2
    assert threads.threads_for(2, 0.9) == 1
    assert threads.threads_for(2, 3.0) == 1  # never below one
    assert threads.threads_for(8, 2.1) == 6


def test_others_busy_subtracts_this_process():
    tick = os.sysconf("SC_CLK_TCK")
    # over 2 s the machine was busy 3 core-seconds, 1 of them ours: others used 1 core
    assert abs(threads.others_busy((0, 0, 0.0), (3 * tick, 1 * tick, 2.0)) - 1.0) < 1e-9


def test_wait_policy_is_set_before_torch_and_the_environment_wins():
    code = (
        "import os, sparsecircuits;"
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def run(**extra):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        return out.stdout.strip()

    assert run() == f"PASSIVE {threads.SPIN_COUNT}"
    assert run(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None"
    assert run(GOMP_SPINCOUNT="0") == "None 0"


def test_threads_option_fixes_the_count():
    code = (
        "import torch; from sparsecircuits import cli, threads;"
        "cli.main(['tasks', 'list', '--threads', '1']);"
        "threads.adapt(); print('threads', torch.get_num_threads(), threads._state['fixed'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "threads 1 True", out.stderr


def test_a_killed_parent_takes_its_workers_with_it(tmp_path):
    """A study killed while its workers train must not leave them training as orphans."""
    script = tmp_path / "pool.py"
    script.write_text(
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from sparsecircuits.threads import in_processes\n"
        "def work(path):\n"
        "    Path(path).write_text(str(os.getpid()))\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    for _ in in_processes(1, work, [(sys.argv[1],)]):\n"
        "        pass\n"
    )
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        parent.kill()  # SIGKILL: the parent gets no chance to shut its pool down
        parent.wait()
        deadline = time.monotonic() + 20
        while _alive(worker):
            assert time.monotonic() < deadline, "the worker outlived its parent"
            time.sleep(0.1)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
