"""CSV reading (csvtable) and tabular preprocessing (tabular): parsing, task inference, normalisation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from learnloop.csvtable import CSVError, CSVTable, parse_numbers, read_csv
from learnloop.models import MLP
from learnloop.tabular import MAX_INFERRED_CLASSES, TabularPreprocessor, infer_task, load_csv


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ read_csv
@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_delimiter_is_detected(tmp_path: Path, sep: str) -> None:
    table = read_csv(write(tmp_path / "t.csv", f"a{sep}b{sep}y\n1{sep}2{sep}3\n4{sep}5{sep}6\n"))
    assert table.columns == ["a", "b", "y"]
    assert table.rows == [["1", "2", "3"], ["4", "5", "6"]]


def test_quotes_bom_blank_lines_and_latin1(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes('\ufeff"name","x"\n"Zoë, the first",1\n\n"b",2\n'.encode())
    table = read_csv(path)
    assert table.columns == ["name", "x"] and table.rows[0] == ["Zoë, the first", "1"]
    assert table.lines == [2, 4]  # the blank line is skipped, line numbers stay the file's
    path.write_bytes("name,x\nZo\xeb,1\n".encode("latin-1"))
    assert read_csv(path).rows == [["Zoë", "1"]]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_with_a_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    # A spreadsheet's "Unicode text" export: UTF-16 with its byte-order mark, tab-separated. Read as Latin-1, its
    # columns were named 'ÿþa\x00', '\x00b\x00'...
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffname\tx\nZoë\t1\n".encode(encoding))
    table = read_csv(path)
    assert table.columns == ["name", "x"] and table.rows == [["Zoë", "1"]]


def test_a_row_of_empty_cells_is_a_row_of_missing_values_and_a_blank_line_no_row(tmp_path: Path) -> None:
    table = read_csv(write(tmp_path / "t.csv", ",,\na,b,y\n1,2,0\n,,\n   \n\n3,4,1\n,,\n"))
    assert table.columns == ["a", "b", "y"]  # empty rows above the header are skipped, as blank lines are
    assert table.rows == [["1", "2", "0"], ["", "", ""], ["3", "4", "1"], ["", "", ""]]
    assert table.lines == [3, 4, 7, 8]
    with pytest.raises(CSVError, match="line 3: 2 cells, but the header has 3"):  # a row, with a delimiter missing
        read_csv(write(tmp_path / "short.csv", "a,b,y\n1,2,0\n,\n"))
    with pytest.raises(CSVError, match="has no header row, only empty cells"):
        read_csv(write(tmp_path / "none.csv", ",,\n,,\n"))
    rows = "".join(f"{i},{i},{i % 2}\n" for i in range(10))
    data = load_csv(write(tmp_path / "train.csv", f"a,b,y\n{rows},,\n,,\n"), "y")  # a spreadsheet's empty rows
    assert len(data.train) + len(data.valid) == 10 and "left out 2 rows whose target 'y' is missing" in data.notes


def test_unnamed_columns_get_names(tmp_path: Path) -> None:
    table = read_csv(write(tmp_path / "t.csv", ",a,y\n0,1,2\n"))  # pandas' index column has no name
    assert table.columns == ["column_1", "a", "y"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "is empty"),
        ("\n  \n", "is empty"),
        ("a,b,y\n", "has a header .* but no data rows"),
        ("a,a,y\n1,2,3\n", "several columns named 'a'"),
        ("a,b,y\n1,2,3\n1,2\n", "line 3: 2 cells, but the header has 3 columns"),
    ],
)
def test_unusable_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(CSVError, match=match):
        read_csv(write(tmp_path / "t.csv", text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No such file"):
        read_csv(tmp_path / "nope.csv")


def test_parse_numbers() -> None:
    values, bad = parse_numbers(["1", "2.5", "", "NA", "nan", "?", "true", "False", "-3e2"])
    assert bad is None
    np.testing.assert_array_equal(values[[0, 1, 6, 7, 8]], [1, 2.5, 1, 0, -300])
    assert np.isnan(values[2:6]).all()
    assert parse_numbers(["1", "x", "2"])[1] == 1


# ------------------------------------------------------------------------------------ task inference
@pytest.mark.parametrize(
    ("cells", "task"),
    [
        (["a", "b", "a"], "classification"),
        (["0", "1", "1", "0"], "classification"),
        (["1.0", "2.0", "3"], "classification"),
        ([str(i) for i in range(MAX_INFERRED_CLASSES + 1)], "regression"),
        (["0.5", "1", "2"], "regression"),
        (["1", "2", "", "3"], "classification"),  # a missing value does not make the target a string
    ],
)
def test_infer_task(cells: list[str], task: str) -> None:
    assert infer_task(cells) == task


# ------------------------------------------------------------------------------------ preprocessing
def table_file(tmp_path: Path) -> Path:
    rows = ["x1,x2,color,id,label"]
    rng = np.random.default_rng(0)
    for i in range(40):
        x2 = "" if i == 3 else i % 7
        rows.append(f"{rng.normal(10, 2):.3f},{x2},{['red', 'blue'][i % 2]},{i},{'yes' if i % 3 else 'no'}")
    return write(tmp_path / "t.csv", "\n".join(rows) + "\n")


def test_the_target_and_dropped_columns_are_no_categorical_features(tmp_path: Path) -> None:
    # Listed as categorical, the target was one-hot encoded as an input too (the model read the answer, and
    # `learnloop predict` then asked new rows for it); a dropped column was one-hot encoded all the same.
    with pytest.raises(CSVError, match=r"target column 'label' is also listed as categorical.*Leave the target out"):
        load_csv(table_file(tmp_path), "label", drop=["id"], categorical=["color", "label"])
    with pytest.raises(CSVError, match=r"'color' are both dropped and categorical"):
        load_csv(table_file(tmp_path), "label", drop=["id", "color"], categorical=["color"])
    # Listed in drop, the target was kept as the target without a word, where categorical= refuses it.
    with pytest.raises(CSVError, match=r"target column 'label' is also listed in --drop .*Leave it out of --drop"):
        load_csv(table_file(tmp_path), "label", drop=["id", "label"])


def test_load_csv_classification(tmp_path: Path) -> None:
    data = load_csv(table_file(tmp_path), "label", valid_pct=0.25, drop=["id"], categorical=["color"])
    prep = data.prep
    assert prep.task == "classification" and prep.classes == ["no", "yes"]
    assert prep.numeric == ["x1", "x2"] and prep.categorical == {"color": ["blue", "red"]}
    assert prep.n_inputs == 4 and prep.n_outputs == 2
    x, y = data.train.tensors
    assert len(data.train) == 30 and len(data.valid) == 10
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x[:, :2].mean(0).abs().max() < 1e-5  # normalised with the training rows' statistics
    assert torch.isfinite(x).all()  # the missing x2 cell became the mean (0)
    assert set(x[:, 2:].sum(1).tolist()) == {1.0}  # one-hot
    assert any("filled 1 missing" in note for note in data.notes)


def test_split_is_seeded(tmp_path: Path) -> None:
    path = table_file(tmp_path)
    a, b = (load_csv(path, "label", drop=["id", "color"], seed=1) for _ in range(2))
    c = load_csv(path, "label", drop=["id", "color"], seed=2)
    assert torch.equal(a.valid.tensors[0], b.valid.tensors[0])
    assert not torch.equal(a.valid.tensors[0], c.valid.tensors[0])


def test_preprocessing_round_trips_through_json(tmp_path: Path) -> None:
    path = table_file(tmp_path)
    prep = load_csv(path, "label", drop=["id"], categorical=["color"]).prep
    again = TabularPreprocessor.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert again == prep
    table = read_csv(path)
    assert torch.equal(again.transform(table), prep.transform(table))


def test_transform_new_rows_by_column_name(tmp_path: Path) -> None:
    prep = load_csv(table_file(tmp_path), "label", drop=["id"], categorical=["color"]).prep
    new = read_csv(write(tmp_path / "new.csv", "color,extra,x2,x1\ngreen,z,3,10\nred,z,,\n"))
    x = prep.transform(new)
    assert x.shape == (2, 4)
    assert x[0, 2:].tolist() == [0, 0]  # an unseen category is all zeros
    assert x[1, :2].tolist() == [0, 0]  # missing numbers are the training mean
    with pytest.raises(CSVError, match="lacks the column.*'x1'"):
        prep.transform(read_csv(write(tmp_path / "bad.csv", "x2,color\n1,red\n")))
    # The training options (--drop, --categorical) are no advice for new rows: the model needs the column as it was.
    with pytest.raises(CSVError, match=r"'x2' of .*text.csv must be numeric, as it was in the training rows, but line "
                                       r"3 holds 'lots'. Correct that cell, or empty it") as error:
        prep.transform(read_csv(write(tmp_path / "text.csv", "x1,x2,color\n1,2,red\n1,lots,red\n")))
    assert "--drop" not in str(error.value)


def test_regression_target_stats(tmp_path: Path) -> None:
    rows = ["a,b,price"] + [f"{i},{i % 5},{100000 + 5000 * i + 0.5}" for i in range(50)]
    data = load_csv(write(tmp_path / "r.csv", "\n".join(rows)), "price")
    prep = data.prep
    assert prep.task == "regression" and prep.n_outputs == 1
    assert data.train.tensors[1].dtype == torch.float32
    y = data.train.tensors[1].double()
    assert prep.target_mean == pytest.approx(float(y.mean())) and prep.target_std == pytest.approx(float(y.std(False)))
    model = MLP(prep.n_inputs, 1, target_stats=(prep.target_mean, prep.target_std)).eval()
    with torch.no_grad():  # the output layer works at unit scale: an untrained model predicts near the mean
        assert abs(float(model(data.valid.tensors[0]).mean()) - prep.target_mean) < 5 * prep.target_std


def test_rows_without_target_are_left_out(tmp_path: Path) -> None:
    data = load_csv(write(tmp_path / "t.csv", "x,y\n1,1.5\n2,\n3,2.5\n4,NA\n5,3.5\n6,0.1\n"), "y")
    assert len(data.train) + len(data.valid) == 4
    assert any("left out 2 rows" in note for note in data.notes)


def test_rare_class_only_in_validation_is_known(tmp_path: Path) -> None:
    rows = ["x,y"] + [f"{i},{'a' if i % 2 else 'b'}" for i in range(30)] + ["99,rare"]
    for seed in range(5):
        data = load_csv(write(tmp_path / "t.csv", "\n".join(rows)), "y", seed=seed)
        assert data.prep.classes == ["a", "b", "rare"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": "Label"}, r"'Label' is not a column .* Did you mean 'label'\? Its columns are: 'x1', 'x2'"),
        ({"target": "label"}, r"'color' .* is not numeric: line 2 holds 'red'.*--drop color "
                              r"\(in Python: drop=\['color'\]\).*--categorical color \(categorical=\['color'\]\)"),
        ({"target": "label", "drop": ["nope"]}, "The column to drop 'nope' is not a column"),
        ({"target": "label", "drop": ["x1", "x2", "color", "id"]}, "no feature columns left"),
        ({"target": "color", "drop": ["id", "label"], "task": "regression"}, "must be numeric for regression.*line 2"),
    ],
)
def test_errors_say_what_to_do(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(CSVError, match=match):
        load_csv(table_file(tmp_path), **kwargs)


def test_single_class_and_too_few_rows(tmp_path: Path) -> None:
    with pytest.raises(CSVError, match="single value"):
        load_csv(write(tmp_path / "a.csv", "x,y\n1,a\n2,a\n3,a\n"), "y")
    with pytest.raises(CSVError, match="at least 3 are needed"):
        load_csv(write(tmp_path / "b.csv", "x,y\n1,a\n2,b\n"), "y")


def test_decimal_commas_in_semicolon_files(tmp_path: Path) -> None:
    table = read_csv(write(tmp_path / "t.csv", "a;b;name;y\n1,5;-0,25;Smith, J;3\n2;1e3;x;4,0\n"))
    assert table.rows == [["1.5", "-0.25", "Smith, J", "3"], ["2", "1e3", "x", "4.0"]]
    assert read_csv(write(tmp_path / "c.csv", 'a,y\n"1,5",2\n')).rows == [["1,5", "2"]]  # a ',' file: left alone


def test_empty_columns_are_left_out(tmp_path: Path) -> None:
    data = load_csv(write(tmp_path / "t.csv", "a,empty,y\n" + "".join(f"{i},,{i % 2}\n" for i in range(10))), "y")
    assert data.prep.numeric == ["a"] and any("'empty', which hold no values" in n for n in data.notes)


def test_a_column_with_values_only_in_validation_rows_is_left_out(tmp_path: Path) -> None:
    # Its training cells were all filled with 0 and its statistics were (0, 1): validation rows fed its raw values to
    # weights that never learnt from it. Which rows validate depends on the split: try the value in every row.
    left_out = 0
    for row in range(10):
        text = "a,late,y\n" + "".join(f"{i},{'1000' if i == row else ''},{i % 2}\n" for i in range(10))
        data = load_csv(write(tmp_path / "t.csv", text), "y")
        if "late" in data.prep.numeric:
            assert data.prep.means[1] == 1000 and not any("training rows" in n for n in data.notes)
        else:
            left_out += 1
            assert data.prep.numeric == ["a"] and data.valid.tensors[0].shape[1] == 1
            assert any("'late', which hold no values in the training rows" in n for n in data.notes)
    assert left_out == 2  # the two validation rows of ten


def test_a_constant_column_is_all_zeros_whatever_its_value() -> None:
    # The mean of 1000 cells of 1000000.1 is off by a rounding error, which made a std of 2e-10: the column was
    # "normalised" to all ones, and a new row of 1000000.2 became an input of 4e8.
    rows = [["1000000.1", f"{i % 7}", str(i % 2)] for i in range(1000)]
    table = CSVTable(["big", "x", "y"], rows)
    prep = TabularPreprocessor.fit(table, "y", task="classification")
    assert prep.means[0] == 1000000.1 and prep.stds[0] == 1.0
    assert prep.transform(table)[:, 0].abs().max() == 0
    new = prep.transform(CSVTable(["big", "x"], [["1000000.2", "3"]]))
    assert abs(float(new[0, 0])) < 1


def test_an_infinite_regression_target_is_refused(tmp_path: Path) -> None:
    # It made the target's mean inf and its std nan: every prediction nan, and the run "diverged".
    rows = "x,y\n" + "".join(f"{i},{i * 1.5 + 0.25}\n" for i in range(20)) + "20,1e999\n21,2\n"
    with pytest.raises(CSVError, match=r"'y' of .*t.csv must hold finite numbers for regression, but line 22 holds "
                                       r"'1e999'"):
        load_csv(write(tmp_path / "t.csv", rows), "y")


def test_class_names_do_not_depend_on_the_other_rows(tmp_path: Path) -> None:
    # Numbers were made canonical only when every cell of the column was one: the file's classes were '1.0', '2.0',
    # 'other', but a split without an 'other' row named its cells '1', '2', and load_csv failed whatever the seed.
    rows = "x,y\n" + "".join(f"{i},{'other' if i == 7 else f'{i % 2 + 1}.0'}\n" for i in range(30))
    for seed in range(3):
        assert load_csv(write(tmp_path / "t.csv", rows), "y", seed=seed).prep.classes == ["1", "2", "other"]
    # Booleans are class names as written (they were 0 and 1, which `learnloop predict` then wrote)
    table = CSVTable(["x", "churn"], [[str(i), "True" if i % 3 else "False"] for i in range(12)])
    prep = TabularPreprocessor.fit(table, "churn")
    assert prep.classes == ["False", "True"]
    assert prep.decode(torch.tensor([[0.0, 5.0]]))[0] == ["True"]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_fit_on_no_rows_says_so(task: str) -> None:
    with pytest.raises(CSVError, match="has no rows to learn the preprocessing from"):
        TabularPreprocessor.fit(CSVTable(["x", "y"], []), "y", task=task)  # type: ignore[arg-type]


def test_decode_regression_outputs_of_any_shape_even_no_rows() -> None:
    prep = TabularPreprocessor("y", "regression", ["x"], [0.0], [1.0])
    assert prep.decode(torch.tensor([[1.5], [2.0]])) == ([1.5, 2.0], None)
    assert prep.decode(torch.tensor([1.5, 2.0])) == ([1.5, 2.0], None)
    assert prep.decode(torch.empty(0, 1)) == ([], None) and prep.decode(torch.empty(0)) == ([], None)  # was an error


def test_a_true_false_target_is_not_noted_as_whole_numbers(tmp_path: Path) -> None:
    # Its classes are True and False since they keep their names: the note said the target held whole numbers, and
    # advised --task regression to predict it as a number.
    rows = "x,churn\n" + "".join(f"{i},{'True' if i % 3 else 'False'}\n" for i in range(30))
    data = load_csv(write(tmp_path / "t.csv", rows), "churn")
    assert data.prep.classes == ["False", "True"] and not any("whole numbers" in note for note in data.notes)
    numbers = load_csv(write(tmp_path / "n.csv", rows.replace("True", "1").replace("False", "0")), "churn")
    assert any("whole numbers" in note for note in numbers.notes)
