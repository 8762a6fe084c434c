@llama @resume @fixture.queen
Feature: Streams that survive a dying worker
  When the worker serving a stream dies or stalls after tokens reached the client, the queen moves the
  request to another live worker of the model with the prompt plus the tokens already sent (their
  ids, not re-tokenised text). The client's stream goes on: indexes without a gap or a repeat, and at
  temperature 0 the text an unbroken run gives. The done event says where it moved.

  Scenario: A worker killed mid-stream: the answer goes on on the other worker, equal to an unbroken one
    Given a queen that gives up on a silent stream after 10 seconds
    And a real worker "first" with 1 slot is registered
    And a real worker "second" with 1 slot is registered
    When a client streams 160 tokens of a story at temperature 0 through the queen, unbroken
    And a client streams 160 tokens of a story at temperature 0 and the serving worker is killed after 12 tokens
    Then the stream ends with a done event and [DONE], with no error
    And its token events are numbered from 0 without a gap or a repeat
    And its text is the unbroken answer's
    And the done event says it resumed on the other worker where the first left off
    And the queen counted 1 resumed stream in its metrics

  Scenario: A stalled worker: the answer goes on elsewhere after the stall timeout, and the stalled one sends nothing late
    Given a queen that gives up on a silent stream after 5 seconds
    And a real worker "first" with 1 slot is registered
    And a real worker "second" with 1 slot is registered
    When a client streams 160 tokens of a story at temperature 0 through the queen, unbroken
    And a client streams 160 tokens of a story at temperature 0 and the serving worker is frozen after 12 tokens
    Then the stream ends with a done event and [DONE], with no error
    And its token events are numbered from 0 without a gap or a repeat
    And its text is the unbroken answer's
    And the done event says it resumed on the other worker where the first left off
    When the frozen worker is thawed
    Then the thawed worker has all slots free within 10 seconds

  Scenario: With no other worker the stream ends with the clean error
    Given a queen that gives up on a silent stream after 10 seconds
    And a real worker "only" with 1 slot is registered
    When a client streams 160 tokens of a story at temperature 0 through the queen and the serving worker is killed after 12 tokens
    Then the resumable stream ends with a "WORKER_UNAVAILABLE" error event and [DONE]

  Scenario: The OpenAI route's stream goes on too
    Given a queen that gives up on a silent stream after 10 seconds
    And a real worker "first" with 1 slot is registered
    And a real worker "second" with 1 slot is registered
    And an OpenAI client pointed at the queen
    When the OpenAI client streams up to 160 tokens of a story at temperature 0, unbroken
    And the OpenAI client streams up to 160 tokens of a story at temperature 0 and the serving worker is killed after 12 chunks
    Then the OpenAI stream finished as the unbroken one did, with the unbroken answer's text
