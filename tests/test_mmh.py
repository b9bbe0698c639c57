"""The MMH classifier on constructed LID values."""

import numpy as np
import pytest

from memgeo.errors import MemgeoError
from memgeo.memorization.mmh import MMH_LABELS, MMHThresholds, mmh_audit


def test_labels_follow_the_documented_rule():
    lid_model = np.array([0.1, 0.2, 9.0, 8.5, 0.3])
    lid_data = np.array([0.0, 10.0, 10.0, 10.0, 9.5])
    a = mmh_audit(lid_model, lid_data)
    # median(lid_data) = 10 -> both thresholds 2.5
    assert (a.model_low, a.data_low) == (2.5, 2.5)
    assert a.label.tolist() == ["DD-Mem", "OD-Mem", "none", "none", "OD-Mem"]
    assert a.counts() == {"none": 2, "OD-Mem": 2, "DD-Mem": 1}
    assert np.allclose(a.deficit, lid_data - lid_model)
    assert set(a.label) <= set(MMH_LABELS)


def test_absolute_thresholds_override_relative_ones():
    a = mmh_audit([1.0, 1.0], [0.5, 3.0], MMHThresholds(model_low=2.0, data_low=1.0))
    assert a.label.tolist() == ["DD-Mem", "OD-Mem"]
    b = mmh_audit([1.0, 1.0], [0.5, 3.0], MMHThresholds(model_low=0.5))
    assert b.label.tolist() == ["none", "none"]


def test_typical_reference_lid_sets_the_scale():
    # Half the audited samples are duplicates (LID_data 0): the audited median would be 5, but the
    # reference data's typical LID of 12 sets the thresholds at 3.
    a = mmh_audit([0.0, 2.0, 10.0, 11.0], [0.0, 0.0, 10.0, 12.0], MMHThresholds(typical=12.0))
    assert (a.model_low, a.data_low) == (3.0, 3.0)
    assert a.label.tolist() == ["DD-Mem", "DD-Mem", "none", "none"]


def test_rows_and_summary():
    a = mmh_audit(np.array([0.0, 5.0]), np.array([0.0, 5.0]))
    rows = a.to_rows()
    assert rows[0]["mmh_label"] == "DD-Mem" and rows[1]["mmh_label"] == "none"
    assert a.summary()["counts"]["DD-Mem"] == 1


def test_bad_input():
    with pytest.raises(MemgeoError, match="one of each"):
        mmh_audit([1.0, 2.0], [1.0])
    with pytest.raises(MemgeoError, match="NaN"):
        mmh_audit([np.nan], [1.0])
    with pytest.raises(MemgeoError, match="rel"):
        mmh_audit([1.0], [1.0], MMHThresholds(rel=2.0))
