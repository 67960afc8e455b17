"""The demo end to end in one short epoch: every row of the table, the controls included, and its files."""

import json

import pytest

from mvformer.demo import run_demo


@pytest.mark.slow
def test_demo_writes_every_row_with_the_controls(tmp_path):
    rows = run_demo(tmp_path, [0], ["train.epochs=1"], log=lambda line: None)
    assert list(rows)[-3:] == ["Control: untrained MV-Former", "Control: time only (visual input zeroed)",
                               "Control: time only (relative time through the sinusoidal code)"]
    stored = json.loads((tmp_path / "results.json").read_text())
    assert list(stored["rows"]) == list(rows) and stored["columns"][0] == "classification"
    time_only = rows["Control: time only (relative time through the sinusoidal code)"][0]
    assert time_only[2] > 0.99  # phases in the same order in every video: tau from relative time alone
    assert (tmp_path / "training_curves.png").is_file() and (tmp_path / "pictures" / "align.gif").is_file()
