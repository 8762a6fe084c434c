Feature: The queen's live dashboard at /ui, in a real browser
  The page follows GET /v2/events: the fleet, requests in flight with their timelines, the recent
  list with each request's worker and time to first token, and throughput over time. Headless
  Chromium against a real queen and real llama.cpp workers.

  @ui @fixture.queen
  Scenario: A worker registered appears within 2 seconds and turns offline when killed
    Given the dashboard is open in a browser
    And the dashboard is live
    And a real worker "ui-worker" with 1 slot is registered
    Then the dashboard shows worker "ui-worker" as "idle" within 2 seconds
    When worker "ui-worker" is killed
    Then the dashboard shows worker "ui-worker" as "offline" within 15 seconds

  @ui @fixture.queen
  Scenario: A streamed request shows in flight, then in the recent list with its worker and TTFT
    Given a real worker "ui-worker" with 1 slot is registered
    And the dashboard is open in a browser
    And the dashboard is live
    When a client streams an answer through the queen in the background
    Then the dashboard shows that request in flight
    And once it is done the recent list shows it with its worker and a time to first token

  @ui @fixture.queen
  Scenario: The throughput chart draws points while requests run
    Given a real worker "ui-worker" with 2 slots is registered
    And the dashboard is open in a browser
    And the dashboard is live
    When clients stream 2 answers through the queen in the background
    Then the throughput chart draws points above zero while they run
    And a screenshot of the dashboard is kept under docs/

  @ui
  Scenario: With keys on, the page asks for a key, refuses a wrong one and works with the right one
    Given a queen that requires the API key "sk-dashboard-key-0123456789"
    And a real worker "ui-worker" with 1 slot is registered
    And the dashboard is open in a browser
    Then the dashboard asks for an API key
    When the key "sk-not-the-key-0123456789" is entered in the dashboard
    Then the dashboard says the key was refused
    When the key "sk-dashboard-key-0123456789" is entered in the dashboard
    Then the dashboard is live
    And the dashboard shows worker "ui-worker" as "idle" within 5 seconds
    And the key is kept in the tab's session storage and not in the URL
