@metrics @fixture.queen
Feature: Prometheus metrics
  The queen exports requests, latencies, tokens, workers and slots; each worker exports its own
  tokens and slots. Both in the Prometheus text format.

  Scenario: Workers and their slots are exported as the registry sees them
    Given 2 scripted workers with 3 slots each are registered
    When the queen's metrics are read
    Then the metrics count 2 workers "idle"
    And the metrics show worker "scripted-0" with 0 of 3 slots busy

  Scenario: A stream in flight holds a busy slot, and abandoning it counts a cancellation
    Given a scripted worker "slow" with 1 slot that streams slowly
    And a long answer is streaming from the queen
    Then the queen's metrics show worker "slow" with 1 of 1 slots busy within 5 seconds
    When the long answer is abandoned by its client
    Then the queen's metrics count 1 cancellation within 5 seconds
    And the queen's metrics show worker "slow" with 0 of 1 slots busy within 5 seconds

  @llama
  Scenario: An inference moves the queen's and the worker's counters
    Given a real worker "metered" with 1 slot is registered
    And the queen's and worker "metered"'s metrics have been read
    When a client streams 8 tokens of "Hello bees" through the queen
    Then the answer ends with a done event
    And the queen counted one more "/v1/inference" answer with status 200
    And the queen counted the answer's tokens as generated, one more time to first token and one more queue wait
    And worker "metered" counted the answer's tokens as generated
