@cli
Feature: rbee-keeper, the command line people type
  A person asks the fleet a question with rbee-keeper and sees the answer as it is written;
  the same command shows what runs and starts a local cluster when there is none.

  @llama @fixture.trio
  Scenario: The answer streams to the terminal
    When the user runs rbee-keeper infer "Once upon a time" for 16 tokens
    Then rbee-keeper exits with code 0
    And rbee-keeper printed the generated text
    And rbee-keeper reported the time to first token and the worker on stderr

  Scenario: Without a queen and with autostart off, infer says how to start one
    Given rbee-keeper points at a queen that is not running
    And rbee-keeper's autostart is off
    When the user runs rbee-keeper infer "Hello" for 8 tokens
    Then rbee-keeper exits with code 1
    And rbee-keeper's error is one line that names "rbee-keeper up"

  @llama @fixture.trio
  Scenario: Ctrl+C cancels the request and frees the worker's slot
    When the user starts rbee-keeper infer "Count from 1 to 1000: 1, 2, 3," for 2000 tokens
    And the user presses Ctrl+C once rbee-keeper has printed the first token
    Then rbee-keeper exits with code 130
    And the cluster's worker has all slots free again within 5 seconds

  @llama @fixture.trio
  Scenario: The worker list shows the cluster's worker
    When the user runs rbee-keeper workers list
    Then rbee-keeper exits with code 0
    And rbee-keeper's table lists the cluster's worker as idle

  @llama @fixture.trio
  Scenario: The hive's models and the queen's hives are listed, as tables and as JSON
    When the user lists the hive's models with rbee-keeper
    Then rbee-keeper exits with code 0
    And rbee-keeper's table lists the default model
    When the user lists the queen's hives with rbee-keeper as JSON
    Then rbee-keeper exits with code 0
    And rbee-keeper's JSON lists the cluster's hive as alive

  @llama
  Scenario: Without a queen, infer starts a local cluster for the one request and stops it after
    Given rbee-keeper points at a queen that is not running
    When the user runs rbee-keeper infer "Hello" for 8 tokens
    Then rbee-keeper exits with code 0
    And rbee-keeper printed the generated text
    And no program that rbee-keeper started is still running

  @llama
  Scenario: A cluster started with up is seen and stopped from another shell
    When the user starts rbee-keeper up on free ports
    Then rbee-keeper says the cluster is up
    When the user runs rbee-keeper status in another shell
    Then rbee-keeper exits with code 0
    When the user runs rbee-keeper down in another shell
    Then rbee-keeper exits with code 0
    And rbee-keeper up ends by itself with code 0
    And no program that rbee-keeper started is still running

  @llama
  Scenario: A local worker on a backend this machine lacks is refused, naming the ones it has
    Given rbee-keeper points at a queen that is not running
    When the user runs rbee-keeper infer "Hello" for 8 tokens on backend "npu"
    Then rbee-keeper exits with code 1
    And rbee-keeper's error says "Backend 'npu' is not available" and names "Available: cpu"
    And no program that rbee-keeper started is still running
