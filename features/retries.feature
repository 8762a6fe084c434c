@retries @cli
Feature: Refused connections are tried again, a bounded number of times
  A part that is starting refuses connections for a moment. rbee-keeper tries a queen it expects to
  answer again a few times within a few seconds (saying so once) before it gives up; a request that
  never reached the queen is the only kind it sends again.

  Scenario: rbee-keeper tries a refusing queen again a few times, says so once, then gives up
    Given rbee-keeper points at a queen that is not running
    When rbee-keeper asks that queen for an answer on the hive "gpu1"
    Then rbee-keeper said once that the queen refused the connection and it is trying again
    And rbee-keeper gave up after trying for at least 3 seconds, naming the queen's address
