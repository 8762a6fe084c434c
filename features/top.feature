Feature: rbee-keeper top: the fleet live in a terminal
  The same view as the dashboard, from GET /v2/events, in a rich Live screen; q quits. Piped, it
  prints one snapshot and exits.

  @top @fixture.queen
  Scenario Outline: In a terminal, top shows the worker and a request, and <key> quits it
    Given a real worker "top-worker" with 1 slot is registered
    When rbee-keeper top runs in a terminal against the queen
    And a client streams an answer through the queen in the background
    Then the terminal shows worker "top-worker" and that request within 30 seconds
    When "<key>" is typed in the terminal
    Then rbee-keeper top exits with status 0 within 5 seconds

    Examples:
      | key    |
      | q      |
      | Ctrl+C |

  @top @fixture.queen
  Scenario: Piped, top prints one snapshot and exits
    Given a real worker "top-worker" with 1 slot is registered
    When rbee-keeper top runs with its output piped
    Then it prints one snapshot naming worker "top-worker" and exits 0
