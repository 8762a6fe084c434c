@hardening @fixture.queen
Feature: Broken and hostile input
  Bad input gets a 4xx in the one envelope that says what to fix: never a 500, never a hang, and a
  refused request changes nothing.

  @deployable
  Scenario: A body that is not JSON is refused, saying where it broke
    When a client sends a chat completion body that breaks off after 34 characters
    Then the queen refuses the OpenAI call with 400 "INVALID_REQUEST" of type "invalid_request_error"
    And the error says the JSON broke at line 1 column 35

  @deployable
  Scenario: A body over the size limit is refused
    When a client sends an inference request of 2 MiB
    Then the queen refuses with 413 "PAYLOAD_TOO_LARGE"

  @deployable
  Scenario Outline: A chat completion field out of range is refused, naming the field
    When a client asks for a chat completion with <field> set to <value>
    Then the queen refuses the OpenAI call with 400 "INVALID_REQUEST" of type "invalid_request_error"
    And the error message names the field "<field>"

    Examples:
      | field       | value |
      | temperature | 2.5   |
      | top_p       | -0.1  |
      | max_tokens  | 0     |
      | max_tokens  | 40000 |
      | seed        | -1    |
      | n           | 2     |
      | stream      | maybe |
      | messages    | []    |

  @deployable
  Scenario: A worker id that is not a safe name is refused
    When a client marks worker "not a safe id!" as draining
    Then the queen refuses with 400 "INVALID_REQUEST"

  Scenario: An unsafe request id is replaced by a safe one before it travels on
    Given a scripted worker "steady" with 1 slot that streams slowly
    When a client streams 3 tokens of "Hi" through the queen with the request id "../admin/shutdown"
    Then the answer ends with a done event
    And the answer carries a fresh request id that is a safe name

  Scenario: Every kind of broken request is refused and leaves the queen as it was
    Given a scripted worker "steady" with 1 slot that streams slowly
    When a client sends every kind of broken request to the queen
    Then each was refused with a 4xx in the one envelope
    And the queen still lists only worker "steady", idle, and answers its health

  Scenario: The hive refuses broken input the same way
    Given a hive started with the cluster key "ck-shared-0123456789"
    When the hive is sent a spawn body that is not JSON with the cluster key
    Then the hive refuses with 400 "INVALID_REQUEST"
    When the hive is asked with the cluster key to spawn a worker with slots set to 0
    Then the hive refuses with 400 "INVALID_REQUEST"
    And the error message names the field "slots"
