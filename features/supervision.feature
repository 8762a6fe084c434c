@supervision @llama
Feature: The hive supervises its workers
  The hive watches every worker it started: exits and silent workers leave the queen quickly, a
  worker that cannot start says why, idle workers are stopped, and a restarted hive takes over the
  workers it had started instead of leaking them.

  Background:
    Given a queen

  Scenario: A worker that is killed is deregistered within 5 seconds
    Given a hive with a worker on the default model
    When the hive's worker process is killed
    Then the queen no longer lists the hive's worker within 5 seconds
    And the hive runs no worker

  Scenario: A worker that stops answering is deregistered and killed within 5 seconds
    Given a hive with a worker on the default model
    When the hive's worker process is frozen
    Then the queen no longer lists the hive's worker within 5 seconds
    And the hive's worker process is gone within 5 seconds

  Scenario: A worker that fails to start answers with its last log lines
    Given a hive
    And a file "broken.gguf" that is a GGUF llama.cpp cannot load
    When the hive is asked to start a worker on that file and wait
    Then the hive refuses with 502 "SPAWN_FAILED" saying "Last log lines"
    And the refusal carries the worker's log lines
    And the hive runs no worker

  Scenario: An idle worker is stopped after the idle timeout
    Given a hive that stops workers idle for 3 seconds, with a worker on the default model
    Then the queen no longer lists the hive's worker within 15 seconds
    And the hive runs no worker

  Scenario: A worker that crashes is restarted under the on-failure policy
    Given a hive that restarts failed workers, with a worker on the default model
    When the hive's worker process is killed
    Then the queen lists another idle worker from the hive within 60 seconds

  Scenario: A restarted hive adopts the worker it had started
    Given a hive that keeps workers when it crashes, with a worker on the default model
    When the hive process is killed
    And the hive is started again
    Then the hive lists its earlier worker as ready within 10 seconds
    And the queen lists the hive's worker as idle
    And the hive's worker answers a request through the queen
