@concurrency
Feature: Many clients at once
  Under parallel load with clients leaving mid-stream, every request ends cleanly and no slot leaks.

  @slow
  Scenario: 200 concurrent requests over 3 workers with random disconnects
    Given a queen that queues up to 256 requests for up to 60 seconds
    And 3 scripted workers with 4 slots each are registered
    When 200 clients stream 20 tokens each at once and a fifth of them hang up mid-stream
    Then every request ended with a done event, a clean error, or the client hanging up
    And every slot is free again at the queen and at every worker within 10 seconds

  @llama
  Scenario: Concurrent requests on real workers with disconnects
    Given a queen that queues up to 64 requests for up to 60 seconds
    And a real worker "r1" with 2 slots is registered
    And a real worker "r2" with 2 slots is registered
    When 12 clients stream 16 tokens each at once and a fifth of them hang up mid-stream
    Then every request ended with a done event, a clean error, or the client hanging up
    And every slot is free again at the queen and at every worker within 10 seconds
