@failover
Feature: Failover when a worker fails
  Before the first token the queen quietly tries another worker; after it, the client hears a clean error.

  @llama
  Scenario: A refused connection moves the request to a live worker
    Given a queen
    And a worker "ghost" that is registered but not running
    And a real worker "alive" with 1 slot is registered
    When a client streams 8 tokens of "Hello" through the queen
    Then the answer was served by worker "alive"
    And the answer ends with a done event
    And worker "ghost" is out of routing within 1 seconds

  @chaos @llama
  Scenario: A worker that crashes mid-stream ends the stream with a clean error, and the next request goes elsewhere
    Given a queen
    And a scripted worker "crasher" that dies after 5 tokens
    And a real worker "alive" with 1 slot is registered
    When a client streams 20 tokens of "Hello" through the queen
    Then the stream ends with a "WORKER_UNAVAILABLE" error event and [DONE] within 5 seconds
    And the answer was served by worker "crasher"
    When a client streams 8 tokens of "Hello" through the queen
    Then the answer was served by worker "alive"

  @chaos
  Scenario: A worker that stops sending tokens is caught by the stall timeout
    Given a queen that gives up on a silent stream after 1 second
    And a scripted worker "staller" that stalls after 3 tokens
    When a client streams 20 tokens of "Hello" through the queen
    Then the stream ends with a "WORKER_UNAVAILABLE" error event and [DONE] within 5 seconds
    And scripted worker "staller" has all slots free within 5 seconds
