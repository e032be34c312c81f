"""Bad cell text: one DSLError with file:line:col and a plain sentence; the text is never executed."""

import pytest

from cellsearch import DSLError, parse

GOOD_HEAD = "state(h)\n"

CASES = [
    # (text, line, col, fragment)
    ("state(h)\nh = tanh(linear(x, h)\nreturn h\n", 2, 9, "syntax error"),
    ("state(h)\nh = foo(linear(x, h))\nreturn h\n", 2, 5, "unknown function 'foo'"),
    ("state(h)\nh = sigmoid(linear(x), h)\nreturn h\n", 2, 5, "sigmoid() takes 1 argument, got 2"),
    ("state(h)\nh = blend(h, linear(x))\nreturn h\n", 2, 5, "blend() takes 3 arguments, got 2"),
    ("state(h)\nh = tanh(linear())\nreturn h\n", 2, 10, "linear() takes at least 1 argument"),
    (
        "state(h)\nh = tanh(linear(x, a))\na = tanh(linear(x))\nreturn h\n",
        2,
        20,
        "'a' is used before it is assigned (it is assigned on line 3)",
    ),
    ("state(h)\nh = tanh(linear(x, q))\nreturn h\n", 2, 20, "unknown name 'q'"),
    ("state(h, c)\nh = tanh(linear(x, h, c))\nreturn h\n", 1, 10, "state 'c' is declared but never assigned"),
    ("state(h)\nh = tanh(linear(x, h))\nh = tanh(linear(x, h))\nreturn h\n", 3, 1, "state 'h' is assigned twice"),
    ("state(h)\nh = tanh(1 + 2)\nreturn h\n", 2, 1, "reads neither the input x nor any state"),
    ("state(h)\na = tanh(linear(x, a))\nh = a\nreturn h\n", 2, 20, "defined in terms of itself (a cycle)"),
    ("state(h)\na = tanh(linear(x))\nh = tanh(linear(x, h))\nreturn h\n", 2, 1, "'a' is assigned but never used"),
    ("state(h)\nh = tanh(linear(h))\nreturn h\n", 1, 1, "never reads its input x"),
    ("state(h, c)\nc = tanh(linear(x, h))\nh = tanh(linear(x, h))\nreturn h\n", 1, 10, "state 'c' is never read"),
    ("state(h)\nh = tanh(linear(x, h))\n", 2, 1, "no `return NAME`"),
    ("state(h)\nh = tanh(linear(x, h))\nreturn h\nh = h\n", 4, 1, "nothing may follow return"),
    ("import os\nstate(h)\nh = tanh(linear(x, h))\nreturn h\n", 1, 1, "a cell starts with state(...)"),
    ("state(h)\nimport os\nh = tanh(linear(x, h))\nreturn h\n", 2, 1, "import is not part of the cell language"),
    ("state(h)\nh = __import__('os')\nreturn h\n", 2, 5, "unknown function '__import__'"),
    ("state(h)\nh = tanh(linear(x, h.T))\nreturn h\n", 2, 20, "attribute access (a.b) is not part of the cell language"),
    ("state(h)\nh = tanh(linear(x, h)[0])\nreturn h\n", 2, 10, "subscripts (a[i]) is not part of the cell language"),
    ("state(h)\nh = (lambda: h)()\nreturn h\n", 2, 5, "only named functions can be called"),
    ("state(h)\nfor i in h:\n    h = h\nreturn h\n", 2, 1, "loops is not part of the cell language"),
    ("state(h)\nh = tanh(linear(x, h)) / 2\nreturn h\n", 2, 5, "the operator / is not part of the cell language"),
    ("state(h)\nh += tanh(linear(x, h))\nreturn h\n", 2, 1, "augmented assignment"),
    ("state(h)\nh = tanh(linear(x, h, bias='a'))\nreturn h\n", 2, 28, "must be a number"),
    ("state(h)\nh = tanh(linear(x, h, scale=2))\nreturn h\n", 2, 23, "has no keyword 'scale'"),
    # bias=none is the one spelling of a linear without a bias
    ("state(h)\nh = tanh(linear(x, h, bias=None))\nreturn h\n", 2, 28, "write linear(..., bias=none), in lower case"),
    ("state(h)\nh = tanh(linear(x, h, bias=nothing))\nreturn h\n", 2, 28, "bias=) must be a number or none (no bias)"),
    ("state(h)\nh = tanh(linear(x, h, bias=-none))\nreturn h\n", 2, 28, "bias=) must be a number or none"),
    ("state(h)\nh = tanh(linear(x, h, bias='none'))\nreturn h\n", 2, 28, "bias=) must be a number or none"),
    ("state(h)\nh = tanh(linear(x, h, bias=none, bias=1))\nreturn h\n", 2, 34, "has the keyword 'bias' twice"),
    ("state(h)\nh = tanh(linear(x, h) + peep(h, bias=none))\nreturn h\n", 2, 33, "peep() has no keyword 'bias'"),
    ("state(h)\nh = tanh(linear(x, h))\nreturn x\n", 3, 8, "returns its input x"),
    ("state(h)\nh = h\nreturn h\n", 1, 7, "state 'h' is never updated"),
    ("state(h)\nx = tanh(linear(h))\nh = x\nreturn h\n", 2, 1, "x is the step's input and cannot be assigned"),
    ("state(h)\ntanh = linear(x, h)\nh = tanh\nreturn h\n", 2, 1, "'tanh' is a function name"),
    ("state(h, h)\nh = tanh(linear(x, h))\nreturn h\n", 1, 10, "state 'h' is declared twice"),
    ("state(x)\nx = tanh(linear(x))\nreturn x\n", 1, 7, "'x' is reserved"),
    ("", 1, 1, "the cell is empty"),
    ("state(h)\nh = tanh(linear(x, 1))\nreturn h\n", 2, 20, "needs a vector argument"),
    ("state(h)\nh = tanh(linear(x, h)) if h else h\nreturn h\n", 2, 5, "conditional expressions"),
    ("state(h)\nh = tanh(linear(x, True))\nreturn h\n", 2, 20, "only numbers may appear as constants"),
    ("state(h)\ntanh(linear(x, h))\nh = tanh(linear(x, h))\nreturn h\n", 2, 1, "an expression on its own does nothing"),
    ("state(h)\nstate(c)\nh = tanh(linear(x, h))\nreturn h\n", 2, 1, "declares the states once"),
    ("state(h)\na = b = tanh(linear(x, h))\nh = a\nreturn h\n", 2, 1, "exactly one plain name"),
    ("state(h)\nh = tanh(linear(x, h))\nreturn tanh(h)\n", 3, 8, "return must name a value"),
]


@pytest.mark.parametrize(("text", "line", "col", "fragment"), CASES, ids=[c[3][:40] for c in CASES])
def test_bad_cell_text(text, line, col, fragment):
    with pytest.raises(DSLError) as info:
        parse(text, file="bad.cell")
    err = info.value
    assert fragment in err.message, str(err)
    assert (err.line, err.col) == (line, col), str(err)
    assert str(err) == f"bad.cell:{line}:{col}: {err.message}"
    assert "\n" not in str(err)


def test_text_is_never_executed(tmp_path, monkeypatch):
    """Nothing from the text reaches eval/exec: a payload that would write a file does nothing."""
    marker = tmp_path / "pwned"
    payload = f"state(h)\nh = tanh(linear(x, h))\nopen({str(marker)!r}, 'w')\nreturn h\n"
    with pytest.raises(DSLError):
        parse(payload)
    assert not marker.exists()


def test_deep_nesting_is_an_error_not_a_crash():
    text = "state(h)\nh = " + "tanh(" * 5000 + "linear(x, h)" + ")" * 5000 + "\nreturn h\n"
    with pytest.raises(DSLError):
        parse(text)


def test_unused_temporaries_dropped_when_not_strict():
    text = "state(h)\na = tanh(linear(x))\nh = tanh(linear(x, h))\nreturn h\n"
    assert parse(text, strict=False) == parse("state(h)\nh = tanh(linear(x, h))\nreturn h\n")
