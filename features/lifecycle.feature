@lifecycle @llama
Feature: A worker's life: loading, describing itself, draining, exiting
  A worker says truthfully whether it is loading or ready, streams its loading progress, describes
  its model, and on shutdown lets running requests finish (within a bound) before it exits.

  @smoke
  Scenario: The loading progress stream ends with the model ready
    When a worker is started and its loading progress is followed at once
    Then the progress stream ends with stage "ready" and [DONE]
    And the progress it reported never went down and stayed between 0 and 1
    And the worker reports 1 of 1 slots free

  Scenario: Every readiness answer while the worker starts is truthful
    When a worker with 2 slots is started and its readiness is watched until it is ready
    Then every answer was loading with a progress stream to follow, or ready and idle
    And no answer said loading after one said ready
    And every answer reported 2 slots in total and 2 free

  Scenario: A file that is not a model makes the worker exit with an error that says so
    Given a file that is not a GGUF model
    When a worker is started on that file
    Then the worker exits with a non-zero code within 30 seconds
    And its log says it could not load the model

  Scenario: The worker describes its model and its settings
    Given a worker with 2 slots and a context of 1024 tokens
    Then the worker's model info reads
      | field           | value |
      | architecture    | llama |
      | quantization    | Q4_1  |
      | vocab_size      | 49152 |
      | eos_token_id    | 2     |
      | context_trained | 8192  |
    And the worker's model info gives a parameter count and the file's size on disk
    And the worker's settings are 2 slots of 1024 tokens each

  Scenario: A shutdown request drains: new requests are refused while the running one finishes
    Given a worker with 2 slots and a drain timeout of 120 seconds
    And an answer of 64 tokens is streaming from the worker
    When the worker is asked to shut down
    Then the worker reports it is draining
    And a new request to the worker is refused with 503 "DRAINING"
    And the running answer ends with a done event for "length" and [DONE]
    And the worker exits with code 0 within 150 seconds

  Scenario: SIGTERM lets the running answer finish, then the worker exits cleanly
    # A drain timeout with room to spare: on a busy 2-core machine 64 tokens can take tens of seconds.
    Given a worker with 1 slot and a drain timeout of 120 seconds
    And an answer of 64 tokens is streaming from the worker
    When the worker is sent SIGTERM
    Then the running answer ends with a done event for "length" and [DONE]
    And the worker exits with code 0 within 150 seconds

  Scenario: Draining waits no longer than the drain timeout
    Given a worker with 1 slot and a drain timeout of 1 second
    And a long answer is streaming from the worker
    When the worker is asked to shut down
    Then the long answer ends with a done event for "cancelled"
    And the worker exits with code 0 within 20 seconds
