"""The sample JSON check: the compiled predicate accepts exactly what the field-by-field walk
accepts, and a bad value still gets the walk's message."""

from __future__ import annotations

import copy

import pytest

from maskgen.datasets.sample import _check, check_sample_json, json_type, sample_json


def _meta() -> dict:
    lm = [float(i) + 0.25 for i in range(136)]
    return {
        "key": "0001-0000", "identity": "a", "label": 3, "source": "recordio", "source_path": "train.rec@12",
        "masked": True,
        "mask": {"type": "surgical", "color": "blue", "texture": None, "wear": "normal", "valve": False,
                 "fit_score": 0.91},
        "seed": 7, "output": "aligned", "size": [112, 112], "landmarks": lm, "landmarks_crop": lm[:],
        "box": [1.0, 2, 3.5, 4.0], "det_score": None,
        "pose": {"yaw": 1.0, "pitch": -2.0, "roll": 0},
        "quality": {"sharpness": 1.0, "brightness": None, "face_size": 3.0},
        "skin_tone": {"ita": 10.5, "label": "II"},
        "passthrough": False,
    }


def _walk_ok(meta: dict, cols=()) -> bool:
    try:
        _check(meta, json_type(cols), "json")
    except TypeError:
        return False
    return True


BAD = [
    ("label", True), ("label", 1.5), ("label", "3"), ("masked", 1), ("key", 5), ("size", (112, 112)),
    ("size", [112, True]), ("size", [112.0, 112]), ("landmarks", [0.5] * 135 + [True]), ("landmarks", [0.5, "x"]),
    ("box", [1.0, None, [2.0]]), ("pose", [1.0, 2.0, 3.0]), ("extra", 1), ("mask", "surgical"),
]


@pytest.mark.parametrize("field,value", BAD)
def test_compiled_check_refuses_what_the_walk_refuses(field: str, value) -> None:
    meta = _meta()
    meta[field] = value
    assert not _walk_ok(meta)
    with pytest.raises(TypeError) as exc:
        check_sample_json(meta)
    with pytest.raises(TypeError) as ref:
        _check(meta, json_type(()), "json")
    assert str(exc.value) == str(ref.value)


def test_compiled_check_nested_and_labels() -> None:
    meta = _meta()
    check_sample_json(meta)  # valid: no error
    bad = copy.deepcopy(meta)
    bad["mask"]["valve"] = 0
    with pytest.raises(TypeError, match="json.mask.valve"):
        check_sample_json(bad)
    bad = copy.deepcopy(meta)
    bad["quality"]["spare"] = 1.0
    with pytest.raises(TypeError, match="not declared"):
        check_sample_json(bad)
    labelled = {**meta, "demographics": {"race": "x"}}
    check_sample_json(labelled, ["race"])
    with pytest.raises(TypeError, match="not declared"):
        check_sample_json(labelled)  # no label columns declared
    with pytest.raises(TypeError, match="json.demographics.race"):
        check_sample_json({**meta, "demographics": {"race": 1}}, ["race"])
    assert sample_json(meta).startswith(b'{"box":[1.0,2,3.5,4.0]')
