@queue
Feature: Waiting for a free slot
  With a queue configured, requests wait their turn instead of being refused; the wait is bounded.

  @llama
  Scenario: A queued streaming request hears its place in line and is served when a slot frees
    Given a queen that queues requests for up to 20 seconds
    And a real worker "solo" with 1 slot is registered
    And a long answer is streaming from the queen
    When a second client starts streaming 8 tokens of "Hello" through the queen
    Then the second client is told it is at position 1 in the queue
    When the long answer is abandoned by its client
    Then the second client's answer ends with a done event that reports time spent queued

  @smoke
  Scenario: A request that waits too long is refused with QUEUE_TIMEOUT
    Given a queen that queues requests for up to 1 seconds
    And a scripted worker "slow" with 1 slot that streams slowly
    And a long answer is streaming from the queen
    When a client asks the queen for a whole answer of 4 tokens
    Then the queen refuses with 503 "QUEUE_TIMEOUT"
    And the answer carries a Retry-After header

  @smoke
  Scenario: A full queue refuses at once
    Given a queen that queues at most 1 request for up to 20 seconds
    And a scripted worker "slow" with 1 slot that streams slowly
    And a long answer is streaming from the queen
    And a second client starts streaming 8 tokens of "Hello" through the queen
    And the second client is told it is at position 1 in the queue
    When a client asks the queen for a whole answer of 4 tokens
    Then the queen refuses with 503 "NO_IDLE_WORKERS"
    And the answer carries a Retry-After header

  @smoke
  Scenario: Waiting keys take turns, each key's requests in arrival order
    Given a queen with API keys "alice" and "bob" that queues requests for up to 30 seconds
    And a scripted worker "slow" with 1 slot that streams slowly
    And a long answer is streaming from the queen for "alice"
    When "alice" queues requests "a1", "a2" and "a3" one after another
    And "bob" queues request "b1"
    And the long answer is abandoned by its client
    Then the queued requests are served in the order "a1", "b1", "a2", "a3"
