from core.console import StageClock, duration


def test_duration_reads_at_a_glance():
    assert [duration(s) for s in (3.2, 200, 9000, 4 * 86400, 3e12)] == ["3.2 s", "3.33 min", "2.5 h", "4 days",
                                                                          "9.5e+04 years"]


def test_stage_clock_estimates_the_stage_after_its_first_steps_and_warns_when_absurd(capsys):
    now = [0.0]
    clock = StageClock("train", 10 ** 9 * 32, "check --epochs", min_steps=20, min_seconds=5.0, clock=lambda: now[0])
    for _ in range(7):  # the first step is not timed; then 1 s a step
        clock.step()
        now[0] += 1.0
    out = capsys.readouterr().out
    assert "train: 5 steps took 5.0 s; all 32,000,000,000 steps should take about 1.01e+03 years" in out
    assert "warning: train would run for about" in out and "more than a day; check --epochs" in out
    assert clock.estimate == 32e9


def test_stage_clock_is_quiet_for_short_stages(capsys):
    now = [0.0]
    clock = StageClock("train", 100, clock=lambda: now[0])
    for _ in range(100):
        clock.step()
        now[0] += 0.01
    assert capsys.readouterr().out == ""  # 1 s in all: no estimate needed
    long = StageClock("train", 10000, clock=lambda: now[0])
    for _ in range(30):
        long.step()
        now[0] += 0.01
    out = capsys.readouterr().out
    assert "all 10,000 steps should take about 100.0 s" in out and "warning" not in out
