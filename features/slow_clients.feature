@slow_clients
Feature: Slow and idle clients cannot starve the others
  Every part that listens gives a request head a deadline (--header-timeout), closes idle keep-alive
  connections (--keepalive-timeout), caps the connections one client address may hold
  (--max-conns-per-client) and raises its own open-file limit at start. Slow clients come from other
  loopback addresses (127.0.0.2…) than the normal client (127.0.0.1), as they would from other machines.

  Scenario: 1,200 half-sent requests are cut at the header deadline while a normal client is served
    Given a queen with a 20 second header deadline, started under a soft limit of 1024 open files
    And a real worker "steady" with 1 slot is registered
    When a client at 127.0.0.2 opens 1200 connections to the queen and sends half a request line on each
    Then the queen's log says it raised its open-file limit from 1024
    And while all 1200 are open, a client at 127.0.0.1 gets the queen's health and a real answer
    And every slow connection gets 408 "REQUEST_TIMEOUT" and is closed 19.5 to 40 seconds after it was sent

  Scenario Outline: <part> cuts a half-sent request at its header deadline
    Given <part> started with --header-timeout 2
    When a client at 127.0.0.4 opens 3 connections to it and sends half a request line on each
    Then every slow connection gets 408 "REQUEST_TIMEOUT" and is closed 1.5 to 12 seconds after it was sent

    Examples:
      | part            |
      | queen-rbee      |
      | rbee-hive       |
      | llm-worker-rbee |

  Scenario: One client address beyond its connection cap gets 503, other addresses are served
    Given queen-rbee started with --max-conns-per-client 4
    When a client at 127.0.0.3 opens 4 connections to it and sends half a request line on each
    Then a 5th connection from 127.0.0.3 is answered 503 "TOO_MANY_CONNECTIONS" with a Retry-After header
    And a client at 127.0.0.1 still gets the queen's health
    And once the 4 are closed, a new connection from 127.0.0.3 is served

  Scenario: An idle keep-alive connection is closed at the keep-alive deadline
    Given queen-rbee started with --keepalive-timeout 2
    When a client asks for the queen's health on a kept-alive connection and then stays silent
    Then the queen closes that connection 1.5 to 12 seconds after its answer

  Scenario: Requests whose bodies are withheld are cut at the body deadline while a normal client is served
    Given queen-rbee started with --body-timeout 10
    And a real worker "steady" with 1 slot is registered
    When a client at 127.0.0.5 opens 50 connections to the queen and sends a whole head but half its body on each
    Then while all 50 are open, a client at 127.0.0.1 gets the queen's health and a real answer
    And every slow connection gets 408 "REQUEST_TIMEOUT" naming --body-timeout and is closed 9.5 to 30 seconds after it was sent
