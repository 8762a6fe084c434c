@deadlines
Feature: Deadlines end to end
  A request may say by when it must be finished: an X-Request-Deadline header (RFC 3339 or epoch
  milliseconds), a timeout in seconds in its body, or else the queen's --default-timeout. Waiting in
  the queue and generating both count against it. The time left goes down to the worker with the
  request, and the worker stops the generation there itself and frees the slot: a stream then ends
  with finish reason "deadline" and [DONE]; a request that is out of time before it starts, or a
  whole answer cut short, gets 504 DEADLINE_EXCEEDED.

  @smoke
  Scenario Outline: A deadline that cannot be read is refused with a 400 naming it
    Given a queen
    When <asked>
    Then the queen refuses with 400 "INVALID_REQUEST"
    And the refusal names the field "<field>"

    Examples:
      | asked                                                                           | field              |
      | an answer is asked of the queen with the deadline header "soon"                 | X-Request-Deadline |
      | an answer is asked of the queen with the deadline header "2026-01-01T12:00:00"  | X-Request-Deadline |
      | an answer is asked of the queen with the deadline header "1764633600"           | X-Request-Deadline |
      | an answer is asked of the queen with a timeout of -1 seconds in the body        | timeout            |

  @smoke @openai
  Scenario: On the OpenAI route too, a deadline that cannot be read is a 400 naming it
    Given a queen
    When a chat is asked on the OpenAI route with the deadline header "tomorrow"
    Then the queen refuses the OpenAI call with 400 "INVALID_REQUEST" of type "invalid_request_error"
    And the refusal names the field "X-Request-Deadline"

  @llama
  Scenario Outline: A streamed answer stops at its deadline, and the next request finds the slot free
    Given a queen that queues requests for up to 10 seconds with a real worker of 1 slot
    When an endless answer is streamed through the queen with <deadline> of 3 seconds
    Then the stream ends with finish reason "deadline" about 3 seconds after it was sent
    And the worker's slot is free
    And the next answer through the queen is served without waiting for a slot
    And the worker counted 1 generation ending for "deadline"

    Examples:
      | deadline                              |
      | a timeout in the body                 |
      | an RFC 3339 deadline header           |
      | an epoch-milliseconds deadline header |

  @llama
  Scenario: The queen's default timeout bounds a request that gives none
    Given a queen that gives every request 3 seconds unless it says otherwise
    And a real worker "solo" with 1 slot is registered
    When an endless answer is streamed through the queen with no deadline of its own of 0 seconds
    Then the stream ends with finish reason "deadline" about 3 seconds after it was sent

  @llama
  Scenario: The worker itself stops a request at the time it was given, with no queen in between
    Given a worker with 1 slot
    When an endless answer is streamed from the worker with 2 seconds left in its hop header
    Then the stream ends with finish reason "deadline" about 2 seconds after it was sent
    And the worker's slot is free

  @llama
  Scenario: A request whose deadline passes while it waits in the queue gets 504, saying how long it waited
    Given a queen that queues requests for up to 30 seconds with a real worker of 1 slot
    And a long answer is streaming from the queen
    When a short whole answer is asked of the queen with a timeout of 2 seconds
    Then the queen refuses with 504 "DEADLINE_EXCEEDED"
    And the refusal says it ran out of time "in the queue" after waiting about 2 seconds

  @llama
  Scenario: A request already out of time is refused before dispatch and never reaches the worker
    Given a queen that queues requests for up to 10 seconds with a real worker of 1 slot
    When an answer is asked of the queen with a deadline that passed 1 second ago
    Then the queen refuses with 504 "DEADLINE_EXCEEDED"
    And the refusal says it ran out of time "before it was dispatched" without waiting
    And the worker finished no generation at all

  @llama
  Scenario: A whole answer its deadline cuts short is a 504, and the slot is free again
    Given a queen that queues requests for up to 10 seconds with a real worker of 1 slot
    When an endless whole answer is asked of the queen with a timeout of 3 seconds
    Then the queen refuses with 504 "DEADLINE_EXCEEDED"
    And the refusal says it ran out of time "while generating" after waiting about 3 seconds
    And the worker's slot is free
    And the next answer through the queen is served without waiting for a slot

  @llama @openai
  Scenario: On the OpenAI route a streamed chat ends at its deadline with finish reason "deadline"
    Given a queen that queues requests for up to 10 seconds with a real worker of 1 slot
    And an OpenAI client pointed at the queen
    When the OpenAI client streams an endless chat with a timeout of 3 seconds
    Then the OpenAI stream ends with finish reason "deadline" about 3 seconds after it was sent
    And the worker's slot is free

  @llama @openai
  Scenario: On the OpenAI route a whole chat its deadline cuts short is a 504 the client does not retry
    Given a queen that queues requests for up to 10 seconds with a real worker of 1 slot
    And an OpenAI client pointed at the queen
    When the OpenAI client asks for an endless whole chat with a timeout of 3 seconds
    Then the OpenAI client raises its 504 error for "DEADLINE_EXCEEDED" about 3 seconds after it was sent
    And the worker's slot is free
