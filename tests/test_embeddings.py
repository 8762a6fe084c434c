"""Embeddings: routing by capability, the worker's input checks and encodings, the OpenAI request type."""

import asyncio
import base64
import struct

import numpy as np
import pytest

from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import Capability, EmbeddingRequest, WorkerRegistration
from rbee.queen.admission import AdmissionQueue
from rbee.queen.openai_types import EmbeddingsRequest
from rbee.queen.registry import Registry
from rbee.worker import embeddings

EMBED = Capability.EMBEDDINGS


def reg(worker_id, capability=Capability.GENERATE, model="m", port=9001):
    return WorkerRegistration(worker_id=worker_id, url=f"http://127.0.0.1:{port}", model_ref=model,
                              capability=capability)


def fleet():
    r = Registry()
    r.register(reg("talker", port=9001))
    r.register(reg("embedder", EMBED, port=9002))
    return r


def test_each_capability_gets_only_its_own_workers():
    r = fleet()
    assert r.acquire("m").worker_id == "talker"
    assert r.acquire("m", capability=EMBED).worker_id == "embedder"
    r2 = fleet()
    r2.acquire(None)  # any model: the talker's one slot
    with pytest.raises(RbeeError) as e:  # the embedder's free slot is not offered to generation
        r2.acquire(None)
    assert e.value.code == ErrorCode.NO_IDLE_WORKERS


def test_generation_never_queues_for_an_embeddings_worker():
    r = Registry()
    r.register(reg("embedder", EMBED))
    with pytest.raises(RbeeError) as e:
        r.acquire("m")
    assert e.value.code == ErrorCode.MODEL_NOT_FOUND and "embedder" in e.value.message
    assert "/v1/embeddings" in e.value.message


def test_no_embeddings_worker_is_a_404_naming_who_could_serve():
    r = Registry()
    r.register(reg("talker"))
    with pytest.raises(RbeeError) as e:
        r.acquire("m", capability=EMBED)
    assert e.value.status == 404 and e.value.details["embedding_workers"] == []
    assert "No worker is started for embeddings" in e.value.message and "talker" in e.value.message
    r.register(reg("embedder", EMBED, model="e5", port=9002))
    with pytest.raises(RbeeError) as e:
        r.acquire("m", capability=EMBED)
    assert e.value.details["available"] == ["e5"] and e.value.details["embedding_workers"] == ["embedder"]


def test_queued_embedding_is_handed_the_embeddings_workers_slot():
    async def run():
        r = fleet()
        q = AdmissionQueue(r, max_size=4, timeout=5)
        first = r.acquire("m", capability=EMBED)
        waiting = asyncio.ensure_future(q.admit("m", capability=EMBED))
        await asyncio.sleep(0)
        assert not waiting.done()
        chat, _ = await q.admit("m")  # a generation request is not stuck behind it
        assert chat.worker_id == "talker"
        r.release(first)
        lease, _ = await asyncio.wait_for(waiting, 5)
        assert lease.worker_id == "embedder"

    asyncio.run(run())


def test_inputs_in_every_openai_form():
    assert EmbeddingRequest(input="a").inputs() == ["a"]
    assert EmbeddingRequest(input=["a", "b"]).inputs() == ["a", "b"]
    assert EmbeddingRequest(input=[1, 2]).inputs() == [[1, 2]]
    assert EmbeddingRequest(input=[[1], [2, 3]]).inputs() == [[1], [2, 3]]
    for bad in ("", [], [""], [[]], [1, "a"], [-1]):
        with pytest.raises(ValueError):
            EmbeddingRequest(input=bad)


def test_openai_request_refuses_unknown_fields_and_passes_the_rest_on():
    req = EmbeddingsRequest(model="m", input=["a"], encoding_format="base64", dimensions=576, user="u")
    assert req.for_worker().model_dump(exclude_none=True) == {"input": ["a"], "encoding_format": "base64",
                                                            "dimensions": 576}
    with pytest.raises(ValueError):
        EmbeddingsRequest.model_validate({"model": "m", "input": "a", "truncate": True})


def test_token_checks_name_the_input():
    tokenize = lambda text: [1] * len(text.split())
    assert embeddings.token_inputs(["a b", [5, 6]], tokenize, ctx_size=8, n_vocab=10) == [[1, 1], [5, 6]]
    with pytest.raises(RbeeError) as e:
        embeddings.token_inputs(["a", [10]], tokenize, ctx_size=8, n_vocab=10)
    assert e.value.details["index"] == 1 and "token id 10" in e.value.message
    with pytest.raises(RbeeError) as e:
        embeddings.token_inputs(["a " * 9], tokenize, ctx_size=8, n_vocab=10)
    assert e.value.code == ErrorCode.CONTEXT_OVERFLOW and "--ctx-size" in e.value.message


def test_dimensions_only_as_the_models_own():
    embeddings.check_dimensions(None, 576)
    embeddings.check_dimensions(576, 576)
    with pytest.raises(RbeeError) as e:
        embeddings.check_dimensions(64, 576)
    assert e.value.details["field"] == "dimensions"


def test_base64_is_little_endian_float32_of_the_same_values():
    v = np.array([0.1, -2.5, 3e-8], dtype=np.float32)
    b64 = embeddings.encode(v, "base64")
    raw = base64.b64decode(b64)
    assert list(struct.unpack("<3f", raw)) == embeddings.encode(v, "float")
    body = embeddings.answer([v, v], 7, "m", "float")
    assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


def test_an_embeddings_workers_requests_count_as_activity_for_the_hives_idle_timeout():
    from rbee.hive.watch import generations

    text = ('rbee_worker_generations_total{finish_reason="stop"} 0.0\n'
            'rbee_worker_embeddings_total 4.0\n'
            'rbee_worker_embeddings_created 1.7e9\n')
    assert generations(text) == 4.0
