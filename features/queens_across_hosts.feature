@fleet @queens @llama @chaos
Feature: Two queens on two machines, one hive on a third
  A queen on the control host and another on alpha, each with its own registries and queue (no
  shared store), both keyed; beta's hive is started with `--queen-url A,B` and registers its worker
  (one real worker on the default model, 2 slots) with both. Clients reach each queen only by its
  machine's address. The worker is the truth about its slots: a queen that finds them taken by the
  other queen's requests hears `ALL_SLOTS_BUSY`, and its requests wait for the slots rather than fail.

  @fixture.hosts
  Scenario: Clients of either queen are served, and the slots the other queen holds are waited for
    Given a queen on the control host and a second queen on alpha
    And a hive on beta that serves both queens, with a worker of 2 slots
    Then both queens route to the worker on beta within 10 seconds
    And 2 requests through the queen on control are served by the worker on beta
    And 2 requests through the queen on alpha are served by the worker on beta
    Given 2 answers streaming through the queen on alpha hold both slots of the worker on beta
    Then 2 requests through the queen on the control host wait for those slots and are served by the worker on beta

  @fixture.hosts
  Scenario: The queen on the control host killed: the queen on alpha goes on serving
    Given a queen on the control host and a second queen on alpha
    And a hive on beta that serves both queens, with a worker of 2 slots
    Then both queens route to the worker on beta within 10 seconds
    When the queen on the control host is killed
    Then 3 requests through the queen on alpha are served by the worker on beta
    And the queen on alpha keeps the hive on beta live and its worker in routing for 6 seconds

  @fixture.hosts
  Scenario: Alpha, the second queen's machine, killed: the queen on the control host goes on serving
    Given a queen on the control host and a second queen on alpha
    And a hive on beta that serves both queens, with a worker of 2 slots
    Then both queens route to the worker on beta within 10 seconds
    When alpha, the second queen's host, is killed
    Then 3 requests through the queen on control are served by the worker on beta
    And the queen on control keeps the hive on beta live and its worker in routing for 6 seconds
