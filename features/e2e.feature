@e2e @llama
Feature: End to end on the default model
  A hive spawns a worker on the embedded default model; a person asks a question with rbee-keeper.

  @smoke @fixture.trio
  Scenario: The hive's worker answers rbee-keeper
    Then the hive's worker is listed by the queen as idle
    When a person asks the fleet "Say hello" for 16 tokens from the command line
    Then the command line printed generated text and exited with success

  @fixture.trio
  Scenario: Stopping the hive leaves no worker behind
    Given the hive's worker is listed by the queen as idle
    When the hive is sent SIGTERM
    Then the hive exits within 20 seconds
    And no worker process started by the hive is alive
    And the queen no longer lists the hive's worker within 5 seconds
