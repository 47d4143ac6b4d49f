"""Reading a batch's jobs, without running any (test_batch.py runs them): CSV cells, and the --grid."""

from __future__ import annotations

import pytest

from stylerun.errors import InputError
from stylerun.jobs.batch import grid_specs, read_specs


def test_csv_cells_are_read_as_written(tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text('content, style, output, size, note, alpha\n'
                    '1.5, "a.jpg; b.jpg", 256, 64, , 1e-3\n'
                    'c.jpg, s.jpg, o.png, 32, "hi, there", true\n'
                    'c.jpg, s.jpg, o.png, 32, x, y, too many\n')
    first, second, third = read_specs(jobs)
    # file names stay text even when they read as numbers; an empty cell is left out, the cells after it kept
    assert first.data == {"content": "1.5", "style": ["a.jpg", "b.jpg"], "output": "256", "size": 64, "alpha": 1e-3}
    assert first.source == "jobs.csv:2" and first.base == tmp_path and first.error is None
    assert second.data["note"] == "hi, there" and second.data["alpha"] is True  # a quoted cell after a space
    assert (third.source, third.data, third.base, third.error) == \
        ("jobs.csv:4", {}, tmp_path, "the row has more cells than the header")


def test_a_grid_is_every_content_with_every_style_in_order():
    specs = grid_specs(["c1.jpg", "c2.jpg"], ["s1.jpg", "s2.jpg;s3.jpg"])
    assert [s.source for s in specs] == ["grid 1", "grid 2", "grid 3", "grid 4"]
    assert [(s.data["content"], s.data["style"]) for s in specs] == [
        ("c1.jpg", ["s1.jpg"]), ("c1.jpg", ["s2.jpg", "s3.jpg"]),
        ("c2.jpg", ["s1.jpg"]), ("c2.jpg", ["s2.jpg", "s3.jpg"])]


@pytest.mark.parametrize("contents,styles", [([], ["s.jpg"]), (["c.jpg"], []), ([], [])])
def test_a_grid_needs_contents_and_styles(contents, styles):
    with pytest.raises(InputError, match=r"^--grid needs --content FILE\.\.\. and --style FILE\.\.\.$"):
        grid_specs(contents, styles)
