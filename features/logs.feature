@hardening @logs
Feature: Logs
  Every program logs JSON lines through one request id that runs from the client to the worker.
  Keys never reach the logs, and prompts only when the queen is started with --log-prompts.

  Scenario: Keys and prompts stay out of the queen's log
    Given a queen that requires the API key "sk-never-logged-01"
    And a scripted worker "steady" with 1 slot that streams slowly
    When "sk-never-logged-01" streams 3 tokens of "purple elephant secret" through the queen
    And a client with the key "sk-wrong-and-secret" lists the workers
    Then every line of the queen's log is a JSON object
    And the queen's log does not contain "sk-never-logged-01", "sk-wrong-and-secret" or "purple elephant secret"

  Scenario: With --log-prompts the queen logs the prompt
    Given a queen that logs prompts
    And a scripted worker "steady" with 1 slot that streams slowly
    When a client asks the completions route of model "scripted" for 3 tokens of "purple elephant"
    Then the queen serves it
    And the queen's log contains "purple elephant" within 5 seconds

  @llama @fixture.queen
  Scenario: One request id runs from the client through the queen to the worker
    Given a real worker "traced" with 1 slot is registered
    When a client streams 4 tokens of "Hello" through the queen with the request id "trace-0042"
    Then the answer carries the request id "trace-0042"
    And the request id "trace-0042" is in the queen's log and in worker "traced"'s log within 5 seconds
