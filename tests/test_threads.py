"""A stopped run leaves its thread pools at once: an interrupt in the main thread (Dagster raises one there on SIGTERM)
cancels the queued jobs and does not wait for the running one; an ordinary error still waits, as before."""

from __future__ import annotations

import signal
import threading

import pytest

from webdancer_dagster.evaluation.benchmarks import BenchmarkQuestion
from webdancer_dagster.evaluation.run import evaluate
from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.synthesis.rejection import rejection_sample
from webdancer_dagster.threads import worker_pool


class Interrupted(BaseException):
    """What Dagster's signal handler raises (`DagsterExecutionInterruptedError`): a BaseException, not an Exception."""


class BlockingJobs:
    """Jobs whose first one blocks until released; the others record that they started."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()
        self.started: list[int] = []

    def __call__(self, index: int) -> int:
        self.started.append(index)
        self.running.set()
        assert self.release.wait(timeout=60), "the test never released the job"
        return index


def test_an_interrupt_cancels_queued_jobs_and_does_not_wait_for_the_running_one():
    jobs = BlockingJobs()
    with pytest.raises(Interrupted), worker_pool(1) as pool:
        futures = [pool.submit(jobs, index) for index in range(3)]
        assert jobs.running.wait(timeout=60)
        raise Interrupted
    try:
        assert not jobs.release.is_set() and not futures[0].done()  # left while the job still ran
        assert all(future.cancelled() for future in futures[1:])
    finally:
        jobs.release.set()
    assert futures[0].result(timeout=60) == 0
    assert jobs.started == [0]


def test_an_error_waits_for_the_running_jobs_as_a_plain_pool_does():
    jobs = BlockingJobs()
    jobs.release.set()
    with pytest.raises(ValueError), worker_pool(2) as pool:
        futures = [pool.submit(jobs, index) for index in range(4)]
        raise ValueError("a failed step")
    assert [future.result(timeout=0) for future in futures] == [0, 1, 2, 3]


@pytest.fixture
def interrupt_main_thread():
    """A function that interrupts the main thread as Dagster does on SIGTERM: a signal whose handler raises."""

    def raise_interrupted(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    yield lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, previous)


def scoring(run_agent):
    questions = [BenchmarkQuestion(id=f"q{index}", question=f"Question {index}?", answers=["x"]) for index in range(5)]
    return evaluate(questions, run_agent, judge=None, runs=3, max_workers=2)


def sampling(run_agent):
    pairs = [QAPair(question=f"Question {index}?", answer="x", kind="e2hqa", source="e2hqa") for index in range(5)]
    return rejection_sample(pairs, run_agent, judge=None, k=1, max_workers=2)


@pytest.mark.parametrize("stage", [scoring, sampling])
def test_scoring_and_sampling_stop_on_an_interrupt_while_agents_still_run(stage, interrupt_main_thread):
    release, questions = threading.Event(), []
    lock = threading.Lock()

    def run_agent(question: str, sample_index: int):
        with lock:
            questions.append(question)
            if len(questions) == 2:  # both workers busy: interrupt the main thread waiting on them
                interrupt_main_thread()
        release.wait(timeout=60)
        raise RuntimeError("the model server went away with the stopped run")

    try:
        with pytest.raises(Interrupted):
            stage(run_agent)
        assert not release.is_set()
        assert len(questions) == 2  # the 13 (scoring) or 3 (sampling) queued agent runs never started
    finally:
        release.set()
