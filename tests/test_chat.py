"""Chat messages rendered with a model's own template (sandboxed Jinja), ChatML when it has none."""

from __future__ import annotations

import pytest

from rbee import chat
from rbee.errors import ErrorCode, RbeeError
from rbee.protocol import InferenceRequest

# The template inside SmolLM2-135M-Instruct's GGUF, verbatim.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-2 style: uses bos/eos and refuses out-of-order roles through raise_exception.
ALTERNATING = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_smollm2_template_adds_its_system_prompt_and_the_generation_prompt():
    text = chat.render([{"role": "user", "content": "Hi"}], SMOLLM2)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_a_given_system_message_replaces_the_default():
    text = chat.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], SMOLLM2)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert "SmolLM" not in text


def test_without_a_template_chatml_is_used():
    messages = [{"role": "user", "content": "Hi"}]
    expected = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert chat.render(messages, None) == expected
    assert chat.render(messages, "   ") == expected


def test_generation_prompt_can_be_left_out():
    assert chat.render([{"role": "user", "content": "Hi"}], None, add_generation_prompt=False).endswith(
        "<|im_end|>\n")


def test_bos_and_eos_reach_the_template():
    text = chat.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], ALTERNATING,
                       bos_token="<s>", eos_token="</s>")
    assert text == "<s>[INST] a [/INST] b</s>"


def test_a_template_refusing_the_conversation_is_a_400_naming_messages():
    with pytest.raises(RbeeError) as info:
        chat.render([{"role": "assistant", "content": "first"}], ALTERNATING)
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert "alternate" in info.value.message and info.value.details == {"field": "messages"}


def test_tojson_keeps_text_as_is():
    text = chat.render([{"role": "user", "content": "café"}], "{{ messages[0] | tojson }}")
    assert text == '{"role": "user", "content": "café"}'


def test_the_sandbox_blocks_python_internals():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(RbeeError) as info:
        chat.render([{"role": "user", "content": "x"}], evil)
    assert info.value.code == ErrorCode.INVALID_REQUEST


def test_the_sandbox_blocks_mutation():
    with pytest.raises(RbeeError):
        chat.render([{"role": "user", "content": "x"}], "{{ messages.append(1) }}")


def test_a_broken_template_is_not_the_clients_fault():
    with pytest.raises(RbeeError) as info:
        chat.render([{"role": "user", "content": "x"}], "{% for %}")
    assert info.value.code == ErrorCode.INTERNAL


def test_message_content_is_not_interpreted_as_template():
    text = chat.render([{"role": "user", "content": "{{ 7 * 7 }}"}], None)
    assert "{{ 7 * 7 }}" in text and "49" not in text


# ---------------------------------------------------------------- the worker's request: prompt xor messages


def test_inference_request_takes_messages_instead_of_a_prompt():
    req = InferenceRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}]})
    assert req.prompt is None and req.messages[0].content == "Hi"


@pytest.mark.parametrize("body", [
    {},
    {"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]},
    {"messages": []},
    {"messages": [{"role": "User!", "content": "Hi"}]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": "Hi", "extra": 1}]},
])
def test_inference_request_refuses_anything_but_exactly_one(body):
    with pytest.raises(ValueError):
        InferenceRequest.model_validate(body)
