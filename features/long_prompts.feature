@llama @cache @long-prompts @fixture.queen
Feature: Long prompts
  A prompt of thousands of tokens takes the worker seconds to decode before its first token. The
  worker decodes it in chunks and tells the stream how far it got (``: prefill done=N total=M``),
  so the queen does not take a long prefill for a stalled worker, while a worker that really
  stalls still sends nothing and is caught.

  Scenario: A prompt that takes longer to decode than the stall timeout is answered, its progress told on the stream
    Given a queen that gives up on a silent stream after 6 seconds
    And a real one-thread worker "long" with a 4096-token context that decodes at most 32 tokens a step is registered
    When a client streams 8 tokens after a 2000-token prompt through the queen with the prompt cache off
    Then the long answer ends with a done event and [DONE]
    And its first token came later than the 6 second stall timeout
    And the stream told the prompt's progress before the first token, rising to the prompt's length
