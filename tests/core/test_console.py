"""The console: a failure takes at most three terminal lines (the whole text goes to the log); long stages say how long they will take."""

from core import console
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


def test_a_long_failure_is_cut_on_the_terminal_and_whole_in_the_log(tmp_path, capsys):
    log = tmp_path / "run.log"
    message = "[x] export: coreml:int8 FAILED: " + "x" * 900 + "\n" + "\n".join(f"line {i}" for i in range(2, 8))
    with console.capture(log):
        console.say_brief(message)
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 3 and len(shown[0]) <= 601 and shown[2].endswith("(in full in the log)")
    assert message in log.read_text()


def test_a_short_failure_is_said_as_it_is(tmp_path, capsys):
    with console.capture(tmp_path / "run.log"):
        console.say_brief("[x] export: a.pte FAILED: short")
    assert capsys.readouterr().out == "[x] export: a.pte FAILED: short\n"
