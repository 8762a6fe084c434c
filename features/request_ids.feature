@hardening @smoke
Feature: Every answer carries a request id
  The request id crosses the parts (client, queen, worker, logs); every answer names it, errors
  included, and only an id in the contract's pattern is passed on.

  Background:
    Given a queen with the API key "sk-request-ids-0123"

  Scenario Outline: Refusals carry the request id the client sent
    When a client sends <kind> with the request id "trace-77"
    Then the answer is <status> and carries the request id "trace-77"

    Examples:
      | kind                      | status |
      | a body that is not JSON   | 400    |
      | no API key                | 401    |
      | a request to no route     | 404    |

  Scenario: A request id outside the contract's pattern is replaced, not passed on
    When a client sends a body that is not JSON with the request id "é٣"
    Then the answer carries a fresh request id in the contract's pattern
