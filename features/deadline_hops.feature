@deadline_hops
Feature: A request's deadline reaches the hive that starts its worker
  When a request with a deadline needs a cold start, the queen sends the time left with the spawn
  call (X-Request-Timeout-Ms; it only shrinks on the way). The hive waits for the worker no longer
  than that and answers 504 DEADLINE_EXCEEDED, saying how long it waited; the worker goes on
  starting, so the next request for its model finds it ready.

  Background:
    Given a queen
    And a hive
    And the hive has told the queen it is alive
    And the hive knows its devices

  @llama
  Scenario: The hive's spawn route with a deadline too short for a worker start answers 504 promptly
    When the hive is asked for a worker on the default model and to wait, with 200 ms left in the hop header
    Then the hive answers 504 "DEADLINE_EXCEEDED" within 3 seconds of the request
    And the hive's refusal says how long it waited and that the worker goes on starting
    And the worker the hive started is idle at the queen within 60 seconds

  @llama
  Scenario: Through the queen, a request whose cold start outlasts its deadline gets 504, and the hive was told
    When a short whole answer of the default model is asked of the queen with a timeout of 0.2 seconds
    Then the queen refuses with 504 "DEADLINE_EXCEEDED"
    And the queen answered within 3 seconds of the request
    And the hive's log says it waited for the worker within the request's deadline, at most 200 ms
    And a short whole answer through the queen is served once the worker that went on starting is idle
