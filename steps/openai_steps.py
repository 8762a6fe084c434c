"""Steps that drive the queen with the official OpenAI Python client, unchanged (base_url = queen/v1)."""

from __future__ import annotations

import functools

import gguf
import openai
from behave import given, then, when

from rbee import chat
from rbee.models import DEFAULT_MODEL_REF, default_model_path
from rbee.testing.clients import BackgroundStream
from rbee.testing.openai_calls import capture_refusal

MODEL = DEFAULT_MODEL_REF
# A chat turn greedy decoding answers with "1, 2, 3, ..." far past 100: it reaches any small token limit.
COUNT_TO_100 = "Count from 1 to 100, separated by commas."


def openai_client(context, key: str | None = None) -> openai.OpenAI:
    """No retries: a scenario must see the queen's first answer, not the SDK's third try."""
    return openai.OpenAI(base_url=f"{context.cluster.queen_url}/v1", max_retries=0, timeout=120 * context.cluster.k,
                         api_key=key or context.fleet_key or "no-key-needed")


@functools.cache
def _default_chat_template() -> str:
    field = gguf.GGUFReader(str(default_model_path())).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode()


def _ask_chat(context, text: str, **options) -> None:
    context.completion = context.openai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **options)


# ---------------------------------------------------------------- clients


@given("an OpenAI client pointed at the queen")
def step_openai_client(context):
    context.openai = openai_client(context)


@given('an OpenAI client pointed at the queen with the key "{key:Q}"')
def step_openai_client_key(context, key):
    context.openai = openai_client(context, key)


# ---------------------------------------------------------------- asking


@given("a long chat answer is streaming from the queen")
def step_long_chat(context):
    # Greedy, this counting runs to the end of the context (~2,000 tokens): it never ends on its own first.
    body = {"model": MODEL, "messages": [{"role": "user", "content": COUNT_TO_100}], "max_tokens": 4000,
            "temperature": 0, "stream": True}
    stream = BackgroundStream(context.cluster.queen, "/v1/chat/completions", body)
    context.add_cleanup(stream.abandon)
    assert stream.response.status_code == 200, stream.response.text
    stream.wait_first_event(30 * context.cluster.k)
    context.long_stream = stream


@when("the OpenAI client lists the models")
def step_list_models(context):
    context.models = [m.id for m in context.openai.models.list()]


@when('the OpenAI client asks at temperature 0 for a chat completion of {n:d} tokens to "{text:Q}"')
def step_chat(context, n, text):
    _ask_chat(context, text, max_tokens=n, temperature=0)


@when('the OpenAI client asks at temperature 0 for {n:d} tokens in reply to "{text:Q}"')
def step_chat_greedy(context, n, text):
    context.conversation = ([{"role": "user", "content": text}], n)
    _ask_chat(context, text, max_completion_tokens=n, temperature=0)


@when('the OpenAI client streams at temperature 0 a chat completion of {n:d} tokens to "{text:Q}" with usage')
def step_chat_stream(context, n, text):
    stream = context.openai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=n, temperature=0, stream=True,
        stream_options={"include_usage": True})
    context.chunks = list(stream)


@when('the OpenAI client asks for a text completion of {n:d} tokens of "{prompt:Q}" at temperature 0')
def step_completion(context, n, prompt):
    context.request = {"model": MODEL, "prompt": prompt, "max_tokens": n, "temperature": 0, "seed": 7}
    context.completion = context.openai.completions.create(**context.request)


@when("the OpenAI client streams the same text completion")
def step_completion_stream(context):
    chunks = context.openai.completions.create(**context.request, stream=True)
    context.streamed_text = "".join(c.choices[0].text for c in chunks if c.choices)


@when("the OpenAI client asks the same again, stopping at a piece from the middle of that answer")
def step_completion_stop(context):
    text = context.completion.choices[0].text
    context.stop = next(text[k:k + 3] for k in range(len(text) // 2, len(text) - 3)
                        if text[k:k + 3].strip() and text.find(text[k:k + 3]) > 0)
    context.first_text = text
    context.completion = context.openai.completions.create(**context.request, stop=[context.stop])


@when('the OpenAI client asks for a chat completion from model "{model:Q}"')
def step_chat_model(context, model):
    capture_refusal(context, lambda: context.openai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4))


@when("the OpenAI client tries to list the models")
def step_try_list(context):
    capture_refusal(context, lambda: context.openai.models.list())


@when('the OpenAI client tries a chat completion of {n:d} tokens to "{text:Q}"')
def step_try_chat(context, n, text):
    capture_refusal(context, lambda: _ask_chat(context, text, max_tokens=n))


@when("the same conversation goes to the queen as a raw prompt rendered with the model's chat template")
def step_raw_rendered(context):
    messages, n = context.conversation
    prompt = chat.render(messages, _default_chat_template())
    context.result = context.cluster.queen.infer({"model": MODEL, "prompt": prompt, "max_tokens": n, "temperature": 0})


# ---------------------------------------------------------------- checking


@then('the model list holds exactly the models of the live workers, "{model:Q}" among them')
def step_model_list(context, model):
    workers = context.cluster.queen.workers()
    live = sorted({w.model_ref for w in workers if w.state not in ("offline", "draining")})
    assert model in context.models and context.models == live, (context.models, live)


@then('the chat answer is assistant text that ended for "{reason:Q}"')
def step_chat_answer(context, reason):
    choice = context.completion.choices[0]
    assert context.completion.object == "chat.completion", context.completion
    assert choice.message.role == "assistant" and choice.message.content, choice
    assert choice.finish_reason == reason, choice


@then("the usage counts {n:d} completion tokens after the prompt's tokens")
def step_usage(context, n):
    usage = context.completion.usage
    assert usage.completion_tokens == n and usage.prompt_tokens > 0, usage
    assert usage.total_tokens == usage.prompt_tokens + n, usage


@then("the first chunk opens the assistant's turn")
def step_first_chunk(context):
    first = context.chunks[0]
    assert first.object == "chat.completion.chunk" and first.choices[0].delta.role == "assistant", first


@then('the streamed text is not empty and only the last choice ended, for "{reason:Q}"')
def step_streamed_text(context, reason):
    choices = [c.choices[0] for c in context.chunks if c.choices]
    assert "".join(c.delta.content or "" for c in choices), choices
    assert choices[-1].finish_reason == reason and all(c.finish_reason is None for c in choices[:-1]), choices


@then("the final chunk reports usage of {n:d} completion tokens and nothing else")
def step_final_usage(context, n):
    last = context.chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == n and last.usage.prompt_tokens > 0, last
    assert all(c.usage is None for c in context.chunks[:-1])


@then("both completions have the same text")
def step_same_completion(context):
    whole = context.completion.choices[0].text
    assert whole and whole == context.streamed_text, (whole, context.streamed_text)


@then('the second answer is the first cut just before that piece, ended for "{reason:Q}"')
def step_cut_at_stop(context, reason):
    choice = context.completion.choices[0]
    expected = context.first_text[:context.first_text.find(context.stop)]
    assert choice.text == expected and choice.finish_reason == reason, (choice, context.stop, context.first_text)


@then("both answers are the same text")
def step_same_answer(context):
    assert context.result.status == 200, context.result.error_body
    chat_text = context.completion.choices[0].message.content
    assert chat_text and chat_text == context.result.text, (chat_text, context.result.text)


@then('the OpenAI client raised {exception} with code "{code:Q}" and type "{kind:Q}"')
def step_raised(context, exception, code, kind):
    err = context.oa_error
    assert err is not None and type(err).__name__ == exception, repr(err)
    assert err.body["code"] == code and err.body["type"] == kind and err.body["message"], err.body
