@no-workers
Feature: No worker can take the request
  When nothing can serve a request the queen says so at once, with a Retry-After hint.

  @smoke @fixture.queen
  Scenario: An empty registry answers 503 NO_WORKERS
    When a client asks the queen for 8 tokens of "Hello"
    Then the queen refuses with 503 "NO_WORKERS"
    And the answer carries a Retry-After header

  @llama @fixture.queen
  Scenario: Every worker busy answers 503 NO_IDLE_WORKERS
    Given a real worker "solo" with 1 slot is registered
    And a long answer is streaming from the queen
    When a client asks the queen for 8 tokens of "Hello"
    Then the queen refuses with 503 "NO_IDLE_WORKERS"
    And the answer carries a Retry-After header
    When the long answer is abandoned by its client
    Then worker "solo" becomes idle with all slots free within 5 seconds
