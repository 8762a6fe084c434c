@placement @llama
Feature: Placement by memory
  A hive estimates a worker's footprint from the model's own header before it starts it, reports its
  memory per device to the queen, and never goes past its budget; a cold start goes to the hive with
  the most room left, and when none has room the answer says so, with each hive's figures.

  Background:
    Given a queen

  Scenario: A hive reports its memory, and what its worker reserves, to the queen and rbee-keeper
    Given a hive "alpha" with a memory budget of 600 MiB
    When hive "alpha" starts a worker on the default model
    Then the queen lists hive "alpha" with its host memory: total, free, a 600 MiB budget, and the worker's estimate reserved
    And rbee-keeper hives list shows hive "alpha" with its memory

  Scenario: A spawn that would go past the hive's budget is refused with the numbers, before it starts
    Given a hive "alpha" with a memory budget of 400 MiB
    When hive "alpha" starts a worker on the default model
    Then a second worker on the default model is refused by hive "alpha" with what it needs and what is free

  Scenario: A cold start goes to the hive with the most room left after the estimate
    Given a hive "tight" with a memory budget of 300 MiB
    And a hive "roomy" with a memory budget of 900 MiB
    And the hives have told the queen their memory
    When a client asks the queen for 4 tokens of the default model
    Then the answer came from a worker on hive "roomy"

  Scenario: When no hive has room, the answer is 507 with what each hive needs and has free
    Given a hive "small" with a memory budget of 120 MiB
    And a hive "smaller" with a memory budget of 100 MiB
    And the hives have told the queen their memory
    When a client asks the queen for 4 tokens of the default model
    Then the queen refuses with 507 INSUFFICIENT_RESOURCES naming each hive with what it needs and what is free
