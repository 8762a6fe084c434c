@sse @llama @fixture.queen
Feature: Token streaming through the queen
  Tokens made by the real llama.cpp worker reach the client through the queen as they are made.

  Background:
    Given the queen has a worker on the default model

  @smoke @deployable
  Scenario: Tokens arrive in order and the stream ends properly
    When a client streams 16 tokens of "Once upon a time" through the queen
    Then the events carry indexes 0 to n-1 in order
    And the answer ends with a done event
    And the stream is terminated by [DONE]
    And the answer names the worker that served it and a request id

  Scenario: At temperature 0 the queen relays exactly what the worker says
    When a client streams 24 tokens of "The capital of France is" at temperature 0 through the queen
    And the same request is sent directly to the worker that served it
    Then both answers have the same text

  @deployable
  Scenario: The first token arrives while generation is still running
    When a client streams exactly 128 tokens of "Write a long story about bees" through the queen
    Then the first token arrived well before the done event
