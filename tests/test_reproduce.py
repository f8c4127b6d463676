import csv

from segattr_utils.reproduce import notebooks_in_order, record_run_time


def read_rows(path):
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_run_times_keep_latest_row_per_notebook(tmp_path):
    record_run_time(tmp_path, "03_ig_attribution", 500.04, resumed=False)
    record_run_time(tmp_path, "00_world", 12.0, resumed=False)
    record_run_time(tmp_path, "03_ig_attribution", 7.0, resumed=True)
    rows = read_rows(tmp_path / "run_times.csv")
    assert [row["notebook"] for row in rows] == ["00_world", "03_ig_attribution"]
    assert rows[1] == {"notebook": "03_ig_attribution", "wall_seconds": "7.0", "resumed": "true"}
    assert rows[0]["wall_seconds"] == "12.0" and rows[0]["resumed"] == "false"


def test_notebooks_in_order_filters_by_prefix(tmp_path):
    for name in ["03_c.ipynb", "00_a.ipynb", "01_b.ipynb", "notes.ipynb"]:
        (tmp_path / name).write_text("{}")
    assert [p.name for p in notebooks_in_order(tmp_path)] == ["00_a.ipynb", "01_b.ipynb", "03_c.ipynb"]
    assert [p.name for p in notebooks_in_order(tmp_path, ["01", "03"])] == ["01_b.ipynb", "03_c.ipynb"]
