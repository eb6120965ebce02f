"""Prediction rows: one way to build, write, read and match them."""

import pytest

from fedprostate.records import predictions

INDEX = [
    {"site": "A", "patient_id": "1", "study_id": "11", "finding_id": "L1", "source": "reader",
     "label": 1, "case_label": 1, "slice": -1},
    {"site": "A", "patient_id": "1", "study_id": "11", "finding_id": "", "source": "organ",
     "label": 0, "case_label": None, "slice": 7},
]  # fmt: skip


def test_rows_round_trip_through_the_csv_with_types(tmp_path):
    rows = predictions.from_index(INDEX, [0.25, 0.75], round=3)
    path = predictions.write(tmp_path / "p.csv", rows)
    back = predictions.read(path)
    assert back == rows
    assert back[0]["case_label"] == 1 and back[1]["case_label"] is None
    assert back[1]["finding_id"] == "slice7" and back[0]["round"] == 3


def test_an_index_row_and_its_prediction_row_have_the_same_finding_key():
    rows = predictions.from_index(INDEX, [0.1, 0.2])
    assert (
        [predictions.finding_key(r) for r in rows]
        == [predictions.finding_key(r) for r in INDEX]
        == ["11:L1", "11:slice7"]
    )


def test_a_bad_row_names_the_file_line_and_patient(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("site,patient_id,finding_id,label,score\nA,42,L1,1,oops\n", encoding="utf-8")
    with pytest.raises(predictions.PredictionsError, match=r"p.csv:2: patient 42"):
        predictions.read(path)
    path.write_text("site,patient_id,label\n", encoding="utf-8")
    with pytest.raises(predictions.PredictionsError, match="missing columns"):
        predictions.read(path)
