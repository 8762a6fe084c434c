"""Wire-model validation and the error envelope."""

import pytest
from pydantic import ValidationError

from rbee.errors import validation_error
from rbee.protocol import InferenceRequest, WorkerRegistration

SEED = {"worker_id": "worker-001", "url": "http://localhost:8081", "model_ref": "tinyllama-q4", "backend": "cpu",
        "device": 0, "node_name": "test-node", "slots_total": 4}


def test_seed_payload_is_valid_and_url_kept_as_given():
    r = WorkerRegistration.model_validate(SEED)
    assert r.url == "http://localhost:8081"


@pytest.mark.parametrize(("field", "value"), [
    ("worker_id", "has space"), ("worker_id", "x" * 65), ("url", "ftp://x"), ("url", "nope"),
    ("slots_total", 0), ("device", -1), ("model_ref", ""), ("backend", "CUDA!"),
])
def test_bad_registration_fields_are_named(field, value):
    with pytest.raises(ValidationError) as e:
        WorkerRegistration.model_validate({**SEED, field: value})
    err = validation_error(e.value)
    assert err.status == 400 and field in err.message
    assert err.details["fields"][0]["field"] == field


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError):
        WorkerRegistration.model_validate({**SEED, "surprise": 1})


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", 0), ("max_tokens", 32769), ("temperature", 2.5), ("top_p", 1.5), ("prompt", ""),
])
def test_inference_bounds(field, value):
    with pytest.raises(ValidationError):
        InferenceRequest.model_validate({"prompt": "hi", field: value})


def test_stop_accepts_a_single_string():
    assert InferenceRequest.model_validate({"prompt": "hi", "stop": "\n"}).stop == ["\n"]
