import os
import subprocess
import sys

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
