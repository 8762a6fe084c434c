@openai @llama @fixture.queen
Feature: OpenAI-compatible front door
  The official OpenAI Python client works against the queen unchanged, streamed and not, and its
  requests are routed and queued like any other inference on a real llama.cpp worker.

  Background:
    Given the queen has a worker on the default model
    And an OpenAI client pointed at the queen

  @deployable
  Scenario: The model list shows the model a live worker serves
    When the OpenAI client lists the models
    Then the model list holds exactly the models of the live workers, "smollm2-135m-instruct" among them

  @smoke @deployable
  Scenario: A chat completion comes back whole, with usage
    When the OpenAI client asks at temperature 0 for a chat completion of 8 tokens to "Count from 1 to 100, separated by commas."
    Then the chat answer is assistant text that ended for "length"
    And the usage counts 8 completion tokens after the prompt's tokens

  @deployable
  Scenario: A streamed chat completion arrives as chunks, then usage, then [DONE]
    When the OpenAI client streams at temperature 0 a chat completion of 8 tokens to "Count from 1 to 100, separated by commas." with usage
    Then the first chunk opens the assistant's turn
    And the streamed text is not empty and only the last choice ended, for "length"
    And the final chunk reports usage of 8 completion tokens and nothing else

  Scenario: Chat messages are rendered with the chat template inside the model's GGUF
    When the OpenAI client asks at temperature 0 for 12 tokens in reply to "Name a colour."
    And the same conversation goes to the queen as a raw prompt rendered with the model's chat template
    Then both answers are the same text

  Scenario: A text completion streamed and whole agree at temperature 0
    When the OpenAI client asks for a text completion of 10 tokens of "Once upon a time" at temperature 0
    And the OpenAI client streams the same text completion
    Then both completions have the same text

  Scenario: A stop sequence ends the answer before it
    When the OpenAI client asks for a text completion of 16 tokens of "The bees of the valley" at temperature 0
    And the OpenAI client asks the same again, stopping at a piece from the middle of that answer
    Then the second answer is the first cut just before that piece, ended for "stop"

  @deployable
  Scenario: A model no worker serves is not found
    When the OpenAI client asks for a chat completion from model "gpt-4o"
    Then the OpenAI client raised NotFoundError with code "MODEL_NOT_FOUND" and type "not_found_error"

  Scenario: A client that abandons a streamed chat frees the worker's slot at once
    Given a long chat answer is streaming from the queen
    When the long answer is abandoned by its client
    Then the worker of the long answer becomes idle with all slots free within 10 seconds
    And the queen's metrics count 1 cancellation within 5 seconds
