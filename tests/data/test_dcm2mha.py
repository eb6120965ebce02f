"""Hospital DICOM -> picai_prep dcm2mha -> our PI-CAI reader, on DICOM written by `data synth`."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from typer.testing import CliRunner

from fedprostate.cli import app
from fedprostate.data.dcm2mha import dcm2mha_settings
from fedprostate.data.formats.base import DataFormatError
from fedprostate.data.formats.dicom import find_series, read_series
from fedprostate.data.formats.registry import list_studies, load_study
from fedprostate.data.synth.federation import synthesize


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcm") / "prostatex"
    synthesize(root, sites=2, patients=4, preset="small", layout="prostatex", workers=1)
    return root


def test_settings_list_every_series_with_prostatex_descriptions(dicom):
    settings = dcm2mha_settings(dicom)
    assert settings["mappings"] == {
        "t2w": {"SeriesDescription": ["t2_tse_tra"]},
        "adc": {"SeriesDescription": ["ep2d_diff_tra_ADC"]},
        "hbv": {"SeriesDescription": ["ep2d_diff_tra_CALC_BVAL"]},
    }
    assert len(settings["archive"]) == 12  # 4 studies x 3 series
    first = settings["archive"][0]
    assert first["patient_id"].startswith("ProstateX-") and (dicom / first["path"]).is_dir()
    with pytest.raises(DataFormatError, match="no T2/ADC"):
        dcm2mha_settings(dicom / "truth")


@pytest.fixture
def restore_logging():
    """picai_prep's converter calls logging.disable(INFO) for the whole process (it is meant to
    run as its own command, `python -m picai_prep dcm2mha`); undo it for the tests after this."""
    yield
    logging.disable(logging.NOTSET)


def test_picai_prep_converts_and_our_picai_reader_reads_the_same_voxels(
    dicom, tmp_path, restore_logging
):
    picai_prep = pytest.importorskip("picai_prep")
    out = tmp_path / "picai"
    result = CliRunner().invoke(app, ["data", "dcm2mha-settings", "--data", str(dicom), "--out",
                                      str(tmp_path / "dcm2mha.json"), "--marksheet",
                                      str(out / "marksheet.csv")])  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "dcm2mha.json").read_text(encoding="utf-8"))
    settings["options"] = {"num_threads": 1, "verbose": 0}
    picai_prep.Dicom2MHAConverter(
        input_dir=str(dicom), output_dir=str(out / "images"), dcm2mha_settings=settings
    ).convert()
    # the site fills in case_csPCa; here it comes from the synthetic truth table
    truth = {
        r["patient_id"]: r["case_csPCa"] for r in csv.DictReader(open(dicom / "truth/studies.csv"))
    }
    with open(out / "marksheet.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["case_csPCa"] for r in rows} == {""} and len(rows) == 4
    for r in rows:
        r["case_csPCa"] = truth[r["patient_id"]]
    with open(out / "marksheet.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    fmt, refs, errors = list_studies(out, findings="none")  # geometry and voxels only
    assert fmt == "picai" and errors == [] and len(refs) == 4
    for ref in refs:
        study = load_study(ref, negatives=0)
        assert study.case_label == (truth[ref.patient_id] == "YES")
        series, _ = find_series(dicom / ref.patient_id, ref.patient_id)  # our own DICOM reading
        for seq in ("t2w", "adc", "hbv"):
            a, b = study.images[seq], read_series(series[seq], ref.patient_id, seq)
            assert a.GetSize() == b.GetSize()
            assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
            assert np.allclose(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
