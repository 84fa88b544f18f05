"""The watchdog's judgement and the pause fence, on a clock the test moves (D43)."""

from __future__ import annotations

import pytest

from taskstream.processors.live.guard import (
    FoldWatchdog,
    PauseFence,
    ReplicaFenced,
    StallJudge,
    Verdict,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_progress_with_lag_for_the_stall_time_is_a_stall() -> None:
    judge = StallJudge(stall_s=10)
    ends = {0: 50, 1: 7}
    assert judge.judge(0, {0: 40, 1: 7}, ends, loop_beat=0) is Verdict.OK
    for t in range(1, 11):
        assert judge.judge(t, {0: 40, 1: 7}, ends, loop_beat=t) is Verdict.OK
    assert judge.judge(11, {0: 40, 1: 7}, ends, loop_beat=11) is Verdict.RESTART
    # the next restart only after another stall time without progress
    assert judge.judge(12, {0: 40, 1: 7}, ends, loop_beat=12) is Verdict.OK


def test_progress_or_no_lag_is_no_stall() -> None:
    judge = StallJudge(stall_s=10)
    for t in range(0, 60):
        # one record folded every 5 s on partition 0: progress, however slow
        positions = {0: 40 + t // 5}
        assert judge.judge(t, positions, {0: 1_000}, loop_beat=t) is Verdict.OK
    idle = StallJudge(stall_s=10)
    for t in range(0, 60):
        assert idle.judge(t, {0: 40}, {0: 40}, loop_beat=t) is Verdict.OK


def test_a_silent_loop_is_a_blocked_loop() -> None:
    judge = StallJudge(stall_s=10)
    verdicts = [judge.judge(t, {0: 40}, {0: 40}, loop_beat=0) for t in range(0, 12)]
    assert verdicts[-1] is Verdict.EXIT
    assert Verdict.EXIT not in verdicts[:10]


def test_a_paused_process_is_judged_afresh() -> None:
    """A zombie woken by SIGCONT: every clock jumped; nothing is judged on that round."""
    judge = StallJudge(stall_s=10)
    assert judge.judge(0, {0: 40}, {0: 90}, loop_beat=0) is Verdict.OK
    assert judge.judge(500, {0: 40}, {0: 90}, loop_beat=0) is Verdict.PAUSED
    # the loop gets a stall time to beat again, the fold a stall time to progress
    assert judge.judge(501, {0: 40}, {0: 90}, loop_beat=0) is Verdict.OK
    assert judge.judge(509, {0: 41}, {0: 90}, loop_beat=509) is Verdict.OK


def test_the_watchdog_acts_on_its_verdicts() -> None:
    clock = Clock()
    acted: list[str] = []
    watchdog = FoldWatchdog(6, lambda: {0: 3}, lambda ps: {0: 9},
                            lambda: acted.append("restart"), lambda: acted.append("exit"),
                            clock=clock)
    for _ in range(8):
        watchdog.beat()
        watchdog.round()
        clock.now += 1
    assert acted == ["restart"]
    for _ in range(8):  # the loop stops beating
        watchdog.round()
        clock.now += 1
    assert acted[-1] == "exit"


def test_a_slow_round_is_no_pause() -> None:
    """The ticker runs on while a round waits for the brokers: nothing is refused."""
    clock = Clock()
    fence = PauseFence(3.0, clock)
    fence.beat()
    for _ in range(100):  # 10 s of a slow flush, the ticker ticking
        clock.now += 0.1
        fence.tick()
    fence.check("the offset commit")
    fence.beat()


def test_a_pause_in_a_round_refuses_its_writes() -> None:
    clock = Clock()
    fence = PauseFence(3.0, clock)
    fence.beat()
    clock.now += 2.9  # stopped, a little less than the lease
    fence.tick()
    fence.check("the local write")
    clock.now += 30  # stopped past the lease; the fold runs before the ticker wakes
    with pytest.raises(ReplicaFenced, match="before the changelog"):
        fence.check("the changelog and effect sends")
    fence.tick()  # the ticker has seen the gap: every later step of the round is refused
    with pytest.raises(ReplicaFenced, match="before the offset commit"):
        fence.check("the offset commit")


def test_a_pause_between_rounds_refuses_the_next_one() -> None:
    clock = Clock()
    fence = PauseFence(3.0, clock)
    fence.beat()
    clock.now += 30
    fence.tick()
    clock.now += 0.1
    fence.tick()
    with pytest.raises(ReplicaFenced, match="before a new round"):
        fence.beat()
    fence.check("the local write")  # the refused beat began a new round
    fence.beat()
