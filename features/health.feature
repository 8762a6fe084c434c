@health
Feature: Worker liveness at the queen
  The queen probes every worker; silent ones leave routing, then the registry.

  @llama @chaos
  Scenario: A killed worker leaves routing within 5 seconds
    Given a queen that checks liveness with a 3 second heartbeat timeout
    And a real worker "doomed" with 1 slot is registered
    When worker "doomed" is killed
    Then worker "doomed" is out of routing within 5 seconds
    And a client asking the queen for 4 tokens of "Hello" is refused with 503 "NO_WORKERS"

  @llama
  Scenario: A live worker registered by hand stays registered
    Given a queen that checks liveness with a 1 second heartbeat timeout
    And a real worker "steady" with 1 slot is registered
    Then worker "steady" stays idle for 3 seconds

  @smoke @llama @deployable @fixture.queen
  Scenario: The queen answers its health to anyone and serves a request on a live worker
    Given the queen has a worker on the default model
    Then a client without a key still gets the queen's health
    When a client streams 4 tokens of "Hello" through the queen
    Then the answer ends with a done event

  @smoke
  Scenario: A dead address registered by hand is dropped
    Given a queen that checks liveness with a 1 second heartbeat timeout and removes after 2 seconds
    When worker "worker-001" registers with model "tinyllama-q4" on node "test-node" with 4 slots
    Then worker "worker-001" is out of routing within 3 seconds
    And the queen does not list worker "worker-001" within 5 seconds
