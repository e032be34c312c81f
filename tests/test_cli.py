"""The CLI: every command documented with an example; contracts; bad input -> one line, exit 2."""

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from cellsearch import parse, zoo
from cellsearch.cli import cli, main


def all_commands(group, prefix=()):
    yield prefix, group
    if isinstance(group, click.Group):
        for name, cmd in group.commands.items():
            yield from all_commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in all_commands(cli)], ids=lambda p: " ".join(p) or "cellsearch")
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    assert f"cellsearch {' '.join(path)}".strip() in result.output


def run(*args):
    return subprocess.run(
        [sys.executable, "-c", "from cellsearch.cli import main; main()", *args], capture_output=True, text=True
    )


def test_cells_json_contract():
    result = CliRunner().invoke(cli, ["cells", "--format", "json"])
    rows = json.loads(result.output)
    assert isinstance(rows, list)
    assert [r["name"] for r in rows] == zoo.names()
    required = {
        "lstm_peephole",
        "nig",
        "nfg",
        "nog",
        "niaf",
        "noaf",
        "np",
        "cifg",
        "fgr",
        "lstm",
        "lstm_fb1",
        "gru",
        "mut1",
        "mut2",
        "mut3",
        "rnn",
    }
    assert required <= set(zoo.names())
    assert len({"mgu", "minimalrnn", "indrnn", "janet", "sru", "ugrnn"} & set(zoo.names())) >= 4


def test_show_json_contract(tmp_path):
    f = tmp_path / "mine.cell"
    f.write_text("state(h)\nh = tanh(linear(x, h))\nreturn h\n")
    for ref in ("gru", str(f)):
        result = CliRunner().invoke(cli, ["show", ref, "--input", "3", "--hidden", "4", "--format", "json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)
        assert {"name", "hash", "text", "parameters", "parameter_count"} <= set(info)
    assert info["name"] == "mine"
    assert info["parameters"] == {"h.W_x": [3, 4], "h.W_h": [4, 4], "h.b": [4]}
    assert info["parameter_count"] == 12 + 16 + 4


def test_show_text(tmp_path):
    result = CliRunner().invoke(cli, ["show", "lstm"])
    assert result.exit_code == 0
    text = "".join(line + "\n" for line in result.output.splitlines() if not line.startswith("#"))
    assert parse(text) == zoo.get("lstm")
    assert "i.W_x  64 x 64" in result.output
    assert "parameter count" in result.output


def test_bad_cell_file_is_one_line_and_exit_2(tmp_path):
    f = tmp_path / "bad.cell"
    f.write_text("state(h)\nh = tanh(linear(x, h))\nh = foo(h)\nreturn h\n")
    proc = run("show", str(f))
    assert proc.returncode == 2
    assert proc.stderr == f"{f}:3:1: state 'h' is assigned twice; every state is assigned exactly once per step\n"
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["show", "nosuchcell"], "unknown cell 'nosuchcell'"),
        (["show", "missing.cell"], "no such cell file: missing.cell"),
        (["show", "mut1", "--input", "3", "--hidden", "4"], "input size must equal the hidden size"),
        (["show", "lstm", "--hidden", "0"], "--hidden"),
        (["show", "lstm", "--format", "yaml"], "--format"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_console_script_is_installed():
    proc = subprocess.run(["cellsearch", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "version" in proc.stdout


def test_bench_kernels_json_contract(torch):
    result = CliRunner().invoke(
        cli, ["bench", "kernels", "--cells", "gru", "--configs", "2,5,3,4", "--rounds", "1", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("[") :])
    assert len(rows) == 1
    row = rows[0]
    for key in ("cell", "batch", "length", "input", "hidden", "backend", "median_ms", "torch_median_ms", "gflops", "peak_gflops"):
        assert key in row
    assert (row["cell"], row["batch"], row["length"], row["input"], row["hidden"], row["backend"]) == ("gru", 2, 5, 3, 4, "cpu")
    assert row["median_ms"] > 0 and row["torch_median_ms"] > 0 and row["peak_gflops"] > 0


def test_bench_flops_count_the_products_the_step_runs():
    """GFLOP/s counts the forward and weight-gradient products of every weight and the gradient through
    every weight whose input depends on a state or a parameter (the benchmark's x needs no gradient):
    for LSTM and GRU, 2*B*T*(2*I + 3*H)*G*H with G gates."""
    from cellsearch.bench.kernels import step_flops

    B, T, I, H = 3, 5, 7, 11
    assert step_flops(zoo.get("lstm"), B, T, I, H) == 2 * B * T * (2 * I + 3 * H) * 4 * H
    assert step_flops(zoo.get("gru"), B, T, I, H) == 2 * B * T * (2 * I + 3 * H) * 3 * H
    # tanh(x) needs no gradient; linear(x)'s output does (its weight), so the product over it counts 3 times
    cell = parse("state(h)\nh = tanh(linear(tanh(x)) + linear(tanh(linear(x))) + linear(h))\nreturn h\n")
    assert step_flops(cell, B, T, H, H) == 2 * B * T * (2 + 2 + 3 + 3) * H * H


def test_bench_verdicts_name_each_miss():
    """The text format ends with the issue's targets judged on the run's rows: each miss named with its ratio."""
    from cellsearch.bench.kernels import Row, verdicts

    def row(cell: str, cfg: tuple[int, int, int, int], ratio: float, pct: float) -> Row:
        return Row(cell, *cfg, "cpu", 1.0, 1.0 / ratio, ratio, 1.0, 1.0, 100.0, pct)

    big, small = (128, 100, 64, 256), (32, 100, 8, 64)
    lines = verdicts([row("lstm", small, 0.6, 30.0), row("lstm", big, 1.2, 49.0), row("gru", small, 0.3, 40.0),
                      row("gru", big, 0.563, 84.6)])  # fmt: skip
    assert lines[0] == "lstm at least as fast as torch (ours/torch <= 1): met at 1 of 2 configs; missed at 128,100,64,256 (1.200)"
    assert lines[1] == "gru 2x faster than torch (ours/torch <= 0.5): met at 1 of 2 configs; missed at 128,100,64,256 (0.563)"
    assert "lstm at 128,100,64,256: 49.0 % of the peak (target >= 50 %): missed" in lines
    assert "gru at 128,100,64,256: 84.6 % of the peak (target >= 50 %): met" in lines
    assert verdicts([row("gru", small, 0.5, 40.0)]) == ["gru 2x faster than torch (ours/torch <= 0.5): met at 1 of 1 configs"]


def test_bench_compile_rows():
    """`bench compile`: a cold first use, a later process loading the cache, the rare ops' one-time
    compile, and a new cell that costs no compilation (the executor is compiled once per machine,
    not per cell)."""
    result = CliRunner().invoke(cli, ["bench", "compile", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["what"]: r for r in json.loads(result.output[result.output.index("[") :])}
    assert set(rows) == {"cold", "cache_hit", "rare_ops", "new_cell"}
    assert all(r["seconds"] > 0 for r in rows.values())
    assert rows["cache_hit"]["seconds"] < rows["cold"]["seconds"] and rows["new_cell"]["seconds"] < 0.5
    for what in ("cold", "cache_hit"):  # Numba's start, timed apart, is part of the seconds
        assert 0 < rows[what]["numba_start_seconds"] < rows[what]["seconds"]
    assert rows["new_cell"]["numba_start_seconds"] == 0  # once per process: the rows after pay none


def test_bench_rejects_bad_configs(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "kernels", "--configs", "1,2,3"])
    assert info.value.code == 2
    assert "batch,length,input,hidden" in capsys.readouterr().err


def test_eval_help_lists_every_hyperparameter():
    from cellsearch.train.loop import HP

    text = " ".join(CliRunner().invoke(cli, ["eval", "--help"]).output.split())
    for name in HP.__dataclass_fields__:
        assert name in text, name
