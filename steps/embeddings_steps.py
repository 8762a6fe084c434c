"""Steps for /v1/embeddings through the queen to workers started with --embeddings, with the official
OpenAI client unchanged. Lengths come from the GGUF itself, not from the worker that is being tested."""

from __future__ import annotations

import base64
import functools
import math
import struct

import gguf
import requests
from behave import given, then, when

from rbee.models import DEFAULT_MODEL_REF, default_model_path
from rbee.testing.openai_calls import capture_refusal

MODEL = DEFAULT_MODEL_REF
DISTINCT_BY = 0.05  # cosine margin between "similar" and "dissimilar" (measured: about 0.2 on the default model)


@functools.cache
def _embedding_length() -> int:
    fields = gguf.GGUFReader(str(default_model_path())).fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    return int(fields[f"{arch}.embedding_length"].parts[-1][0])


def _embed(context, text_or_texts, **options):
    """The answer, its vectors as float lists (context.vectors gains them), and who answered."""
    raw = context.openai.embeddings.with_raw_response.create(model=options.pop("model", MODEL),
                                                             input=text_or_texts, **options)
    answer = raw.parse()
    context.embedded_by = raw.headers.get("X-Rbee-Worker")
    context.usage = answer.usage
    vectors = [d.embedding for d in answer.data]
    context.vectors = getattr(context, "vectors", []) + vectors
    return answer


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# ---------------------------------------------------------------- workers


@given('a real embeddings worker "{worker_id:Q}" is registered')
def step_embeddings_worker(context, worker_id):
    worker = context.cluster.start_worker(worker_id=worker_id, extra=("--embeddings",))
    context.cluster.register(worker)


@given("a hive has spawned an embeddings worker on the default model")
def step_hive_embeddings_worker(context):
    context.cluster.start_hive()
    context.hive_worker_id = context.cluster.spawn_on_hive(embeddings=True)


# ---------------------------------------------------------------- asking


@when('the OpenAI client embeds "{text:Q}"')
def step_embed(context, text):
    _embed(context, text)
    context.texts = [text]


@when("the OpenAI client embeds these texts in one request")
def step_embed_batch(context):
    context.texts = [row["text"] for row in context.table]
    context.batch = _embed(context, context.texts)


@when("the OpenAI client embeds each of those texts alone")
def step_embed_each(context):
    context.alone = [_embed(context, text).data[0].embedding for text in context.texts]


@when('the OpenAI client embeds "{text:Q}" as floats and as base64')
def step_embed_both(context, text):
    context.as_floats = _embed(context, text, encoding_format="float").data[0].embedding
    # Without encoding_format the client asks for base64 and decodes it itself; asked for, it hands it over.
    context.client_decoded = _embed(context, text).data[0].embedding
    context.as_base64 = _embed(context, text, encoding_format="base64").data[0].embedding


@when('the OpenAI client embeds "{text:Q}" shortened to {n:d} dimensions')
def step_embed_dimensions(context, text, n):
    capture_refusal(context, lambda: _embed(context, text, dimensions=n))


@when("the OpenAI client embeds a token id the vocabulary lacks")
def step_embed_bad_token(context):
    capture_refusal(context, lambda: _embed(context, [[1, 2**30]]))


@when('the OpenAI client embeds "{text:Q}" with the model "{model:Q}"')
def step_embed_model(context, text, model):
    capture_refusal(context, lambda: _embed(context, text, model=model))


@when('the OpenAI client chats at temperature 0 "{text:Q}"')
def step_chat(context, text):
    raw = context.openai.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}], temperature=0, max_tokens=8)
    context.chat = raw.parse()
    context.chatted_by = raw.headers.get("X-Rbee-Worker")


# ---------------------------------------------------------------- checking


@then("each vector has the model's embedding length and unit norm")
def step_length(context):
    n = _embedding_length()
    for v in context.vectors:
        assert len(v) == n, (len(v), n)
        assert abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-4, "not L2-normalised"
        assert any(x != 0 for x in v), "a zero vector"


@then("the two vectors are equal")
def step_equal(context):
    first, second = context.vectors[-2:]
    assert first == second, max(abs(a - b) for a, b in zip(first, second, strict=True))


@then("the usage counted the input's tokens")
def step_usage(context):
    words = len(context.texts[0].split())
    # A BPE tokenizer gives at least a token per word here, and not more than one per character (+ BOS).
    assert words <= context.usage.prompt_tokens <= len(context.texts[0]) + 1, context.usage
    assert context.usage.total_tokens == context.usage.prompt_tokens, context.usage


@then("the batch's vectors are indexed in order and equal to the ones embedded alone")
def step_batch_order(context):
    data = context.batch.data
    assert [d.index for d in data] == list(range(len(context.texts))), [d.index for d in data]
    assert [d.embedding for d in data] == context.alone, "a vector in the batch differs from its input's alone"
    assert len({tuple(v) for v in context.alone}) == len(context.alone), "different texts gave the same vector"


@then("the first two are closer to each other than either is to the third, by cosine")
def step_similar(context):
    a, b, c = (d.embedding for d in context.batch.data)
    near, far = _cosine(a, b), max(_cosine(a, c), _cosine(b, c))
    assert near > far + DISTINCT_BY, f"similar {near:.3f}, dissimilar {far:.3f}"


@then("both encodings decode to the same floats")
def step_same_floats(context):
    raw = base64.b64decode(context.as_base64)
    ours = list(struct.unpack(f"<{len(raw) // 4}f", raw))  # little-endian float32, as OpenAI's
    assert len(context.as_floats) == _embedding_length(), len(context.as_floats)
    assert ours == context.as_floats, "base64 decodes to other floats"
    assert context.client_decoded == context.as_floats, "the client's own decoding differs"


@then('the embeddings came from "{embedder:Q}" and the chat from "{talker:Q}"')
def step_who(context, embedder, talker):
    assert context.embedded_by == embedder, context.embedded_by
    assert context.chatted_by == talker, context.chatted_by
    assert context.chat.choices[0].message.content, context.chat


@then("the embeddings came from the hive's worker")
def step_from_hive(context):
    assert context.embedded_by == context.hive_worker_id, (context.embedded_by, context.hive_worker_id)


@then('the queen lists "{a:Q}" with capability "{cap_a:Q}" and "{b:Q}" with capability "{cap_b:Q}"')
def step_listed(context, a, cap_a, b, cap_b):
    for worker_id, capability in ((a, cap_a), (b, cap_b)):
        info = context.cluster.queen.worker(worker_id)
        assert info is not None and info.capability == capability, info


@then('the worker "{worker_id:Q}" itself refuses a generation request, naming its capability')
def step_worker_refuses(context, worker_id):
    url = context.cluster.workers[worker_id].url
    r = requests.post(f"{url}/v1/inference", json={"prompt": "Hi", "max_tokens": 4}, timeout=10)
    assert r.status_code == 400, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["details"]["capability"] == "embeddings" and "--embeddings" in error["message"], error
    health = requests.get(f"{url}/v1/health", timeout=10).json()
    assert health["capability"] == "embeddings", health


@then('the refusal lists the model of "{worker_id:Q}" and the embeddings worker "{worker_id2:Q}"')
def step_refusal_lists(context, worker_id, worker_id2):
    details = context.oa_error.body["details"]
    assert details["available"] == [context.cluster.workers[worker_id].model_ref], details
    assert details["embedding_workers"] == [worker_id2], details
    assert context.cluster.workers[worker_id].model_ref in context.oa_error.body["message"], context.oa_error.body
