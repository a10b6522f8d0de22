"""The console: a failure takes at most three terminal lines; the whole text goes to the log."""

from core import console


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
