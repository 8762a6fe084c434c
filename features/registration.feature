@registration @fixture.queen
Feature: Worker registration at the queen
  Workers announce themselves to the queen; the queen keeps exactly one record per worker id.

  @smoke
  Scenario: The seed worker registers and is listed with all its metadata
    When worker "worker-001" registers with model "tinyllama-q4" on node "test-node" with 4 slots
    Then the queen confirms exactly that worker "worker-001" registered successfully
    And the queen lists worker "worker-001" with
      | field           | value                 |
      | url             | http://localhost:8081 |
      | model_ref       | tinyllama-q4          |
      | backend         | cpu                   |
      | device          | 0                     |
      | node_name       | test-node             |
      | slots_total     | 4                     |
      | slots_available | 4                     |
      | state           | idle                  |

  @smoke @concurrency
  Scenario: Twenty workers registering at once all appear exactly once
    When 20 distinct workers register at the same time
    Then all 20 registrations succeed
    And the queen lists each of the 20 workers exactly once

  @smoke
  Scenario: Registering the same worker again is an idempotent update
    Given worker "worker-001" registers with model "tinyllama-q4" on node "test-node" with 4 slots
    When worker "worker-001" registers with model "tinyllama-q4" on node "test-node" with 2 slots
    Then the registration succeeds
    And the queen lists worker "worker-001" exactly once with 2 slots

  @smoke
  Scenario: A different worker claiming a registered id is refused and changes nothing
    Given worker "worker-001" registers with model "tinyllama-q4" on node "test-node" with 4 slots
    When another worker registers as "worker-001" at a different address
    Then the queen refuses with 409 "WORKER_ALREADY_REGISTERED"
    And the queen lists worker "worker-001" at its original address

  @smoke
  Scenario: A removed worker is no longer listed
    Given worker "worker-001" registers with model "tinyllama-q4" on node "test-node" with 4 slots
    When worker "worker-001" is removed
    Then the removal succeeds
    And the queen does not list worker "worker-001"
    And removing worker "worker-001" again is refused with 404 "WORKER_NOT_FOUND"

  @smoke
  Scenario Outline: Malformed registrations are refused with a message naming the field
    When a registration arrives whose <field> is <bad value>
    Then the queen refuses with 400 "INVALID_REQUEST"
    And the error message names the field "<field>"
    And the queen lists no workers

    Examples:
      | field       | bad value        |
      | worker_id   | "has spaces"     |
      | url         | "not a url"      |
      | slots_total | 0                |
      | device      | "gpu zero"       |
