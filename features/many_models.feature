@many-models @llama @slow
Feature: Many models on one hive without thrash
  A hive with room for one model at a time serves two: it evicts the least recently used idle worker
  of the other model (never a busy one, never one younger than --min-resident), requests for a model
  being loaded wait in order, and runs of requests for one model are served together, so the number
  of swaps stays bounded and every request is answered.

  Scenario: Two models take turns on a hive that has room for one, under a mixed load
    Given a queen that holds waiting requests and swaps models after 20 seconds of waiting
    And a model hub that serves the tiny llama
    And a hive "shared" with room for one model at a time, evicting workers after 3 seconds resident
    And the hives have told the queen their memory
    When requests come in waves, a few at a time, to hive "shared" for the default model, the tiny llama, the default model, the tiny llama, the default model, the tiny llama then the tiny llama, the default model, the tiny llama, the default model
    Then every request is answered with 8 tokens by a worker of its own model
    And hive "shared" evicted workers at most 4 times, and never had workers for both models at once

  Scenario: A model kept busy does not starve another out of the hive
    Given a queen that holds waiting requests and swaps models after 5 seconds of waiting
    And a model hub that serves the tiny llama
    And a hive "shared" with room for one model at a time, evicting workers after 3 seconds resident
    And the hives have told the queen their memory
    When 2 clients keep the default model busy on hive "shared" and a request for the tiny llama comes in
    Then the tiny llama's request is answered within 60 seconds, and so is every request of the busy clients
