@auth @hardening @smoke
Feature: Security settings fail closed
  A missing or broken key setting stops the program at start with the reason and the fix; it never
  runs open by accident.

  Scenario Outline: A server listening beyond this machine with no key refuses to start
    When <program> is started listening on every address without a key
    Then it exits with code 2 saying "--insecure-no-auth"

    Examples:
      | program         |
      | queen-rbee      |
      | rbee-hive       |
      | llm-worker-rbee |

  Scenario: Run open on purpose, a queen says so at start and on its health answer
    Given a queen listening on every address with --insecure-no-auth
    Then its health answer warns that it runs without authentication
    And its log warns that it runs without authentication

  Scenario: A key file other users can read stops the queen, saying how to fix it
    When the queen is started with a key file that other users can read
    Then it exits with code 2 saying "chmod 600"

  Scenario: An empty key file stops the queen
    When the queen is started with a key file that holds only blank lines
    Then it exits with code 2 saying "holds no key"

  Scenario Outline: A key too short to be safe is refused
    When <program> is started with the <flag> "short-key"
    Then it exits with code 2 saying "too short"

    Examples:
      | program    | flag          |
      | queen-rbee | --api-key     |
      | queen-rbee | --cluster-key |
      | rbee-hive  | --cluster-key |
