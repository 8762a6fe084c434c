@fleet @queens @llama
Feature: A fleet that outlives its queen
  The queen's registry is soft state rebuilt from hive heartbeats: a queen that restarts has its
  workers back without a manual step, several queens can serve one fleet side by side, and a hive
  listening on every address tells the queen an address it can actually reach.

  Scenario: A hive listening on every address advertises the address the queen reaches it by
    Given a queen
    And a hive listening on every address, with a worker on the default model
    Then the queen lists the hive at an address other machines can use
    And the queen lists the hive's worker at an address other machines can use
    And a client of the queen is served an answer by the hive's worker

  Scenario: A restarted queen has the hive's worker back within a heartbeat and a second
    Given a queen
    And a hive with a worker on the default model
    When the queen is killed and started again on the same address
    Then the restarted queen lists the hive's worker as idle within 3 seconds
    And the restarted queen lists the hive as live
    And a client of the queen is served an answer by the hive's worker

  Scenario: A stream that dies with the queen frees its slot on the worker
    Given a queen
    And a hive with a worker on the default model
    And a long answer is streaming from the queen
    When the queen is killed
    Then the hive's worker has all its slots free within 2 seconds

  Scenario: Two queens serve one fleet, and one going away leaves the other serving
    Given a queen
    And a second queen
    And a hive that serves both queens, with a worker on the default model
    Then the second queen lists the hive's worker as idle within 10 seconds
    And a client of the queen is served an answer by the hive's worker
    And a client of the second queen is served an answer by the hive's worker
    When the queen is killed
    Then a client of the second queen is served an answer by the hive's worker
