@slots @llama
Feature: Slots on one worker
  A worker with N slots decodes up to N requests together on one model and one context. A request
  that finds every slot taken is turned away at once, and the worker's readiness always tells the
  truth about its slots.

  @smoke
  Scenario: Four requests at the same time are all answered by a worker with four slots
    Given a worker with 4 slots
    When 4 clients each ask the worker for 24 tokens at the same time
    Then all 4 answers end with a done event for "length"
    And the worker reports 4 of 4 slots free

  Scenario: A new request joins the batch that is already running
    Given a worker with 2 slots
    And a long answer is streaming from the worker
    When a client asks the worker for 16 tokens of counting
    Then the answer ends with a done event for "length"
    And the long answer is still streaming

  Scenario: With one slot left, of two simultaneous requests exactly one is admitted
    Given a worker with 4 slots
    And 3 long answers are streaming from the worker
    And the worker reports 1 of 4 slots free
    When two clients ask the worker for a long answer at the same instant
    Then exactly one of them is streaming
    And the other is refused with 503 "ALL_SLOTS_BUSY" naming 4 slots in total, 4 of them busy
    And the worker reports 0 of 4 slots free and is busy

  Scenario: The same seed gives the same text, also while other slots are busy
    Given a worker with 4 slots
    When a client asks the worker for 32 tokens of "Tell me about bees." at temperature 0.9 with seed 42
    And 3 long answers are streaming from the worker
    And the client asks the worker the very same again
    Then the two answers have the same text
    And a different seed gives a different text

  Scenario: Stop strings never reach the client
    Given a worker with 1 slot
    When a client asks the worker for 64 tokens of counting, stopping at "9,"
    Then the answer ends with a done event for "stop"
    And the answer does not contain "9,"
    And the answer is the counting up to just before "9,"

  Scenario: A client asking for 5 tokens gets exactly 5
    Given a worker with 1 slot
    When a client asks the worker for 5 tokens of counting
    Then the answer ends with a done event for "length"
    And the done event counts 5 tokens

  Scenario Outline: A sampler that keeps only the likeliest token writes the greedy text
    Given a worker with 1 slot
    When a client asks the worker for 24 tokens of "The capital of France is" at temperature 0
    And the client asks the same at temperature 1.5 with <setting> set to <value>
    Then the two answers have the same text

    Examples:
      | setting | value |
      | top_k   | 1     |
      | top_p   | 0.001 |
      | min_p   | 1.0   |

  Scenario: A repeat penalty changes what greedy decoding writes
    Given a worker with 1 slot
    When a client asks the worker for 24 tokens of counting
    And the client asks the same at temperature 0 with repeat_penalty set to 3.0
    Then the two answers differ

  Scenario: A prompt longer than the context is refused with the numbers
    Given a worker with 1 slot and a context of 64 tokens
    When a client sends the worker a prompt of about 200 tokens
    Then the worker refuses with 400 "CONTEXT_OVERFLOW"
    And the refusal names the prompt's token count and the context size 64

  Scenario: max_tokens is clipped to the room left in the context, and the answer says so
    Given a worker with 1 slot and a context of 64 tokens
    When a client asks the worker for 500 tokens of counting
    Then the answer ends with a done event for "length"
    And the done event says max_tokens was clipped to the room the prompt left in 64 tokens
    And the done event counts exactly that many tokens
