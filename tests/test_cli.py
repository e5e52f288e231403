"""What a person meets at the command line: read-only commands on a wrong dir, --help words."""

import subprocess
import sys

import pytest

from instsynth.cli import build_parser, main


@pytest.mark.parametrize("cmd", [["status"], ["status", "--verify"], ["stats"], ["preview"], ["quality"],
                                 ["report"], ["export", "--format", "coco", "--out", "EXPORT"]])
def test_read_only_commands_on_a_missing_or_foreign_dir_are_one_line_and_exit_2(cmd, tmp_path, capsys):
    cmd = [str(tmp_path / "export") if c == "EXPORT" else c for c in cmd]
    assert main([*cmd[:1], str(tmp_path / "nope"), *cmd[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such output dir" in err[0] and "nope" in err[0]
    assert not (tmp_path / "nope").exists() and not (tmp_path / "export").exists()  # a refusal writes nothing
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not an output")
    assert main([*cmd[:1], str(tmp_path / "other"), *cmd[1:]]) == 2
    assert "not an InstSynth output dir" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["x.txt"]


def test_help_shows_plain_placeholders():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "ALIAS:" not in text and "alias:" not in text, name
    assert "--generator NAME" in sub.choices["synth"].format_help()


def test_dry_run_names_the_generator_and_its_cost_basis(sample_root, tmp_path):
    out = subprocess.run([sys.executable, "-m", "instsynth.cli", "synth", sample_root, "--out", str(tmp_path / "o"),
                          "--dry-run", "--set", "generator.cost_s_per_item=2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "generator identity" in out.stdout and "cost from the configured generator.cost_s_per_item" in out.stdout
    assert not (tmp_path / "o").exists()
