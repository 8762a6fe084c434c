@openai @llama @fixture.queen
Feature: OpenAI structured outputs, tool calls and logprobs
  The official OpenAI client's structured outputs, tool calls and logprobs work against the queen
  unchanged. The worker holds a constrained answer to its JSON Schema with a grammar in that
  sequence's sampler, so the answer validates even on a small model, while other slots run free.
  What rbee cannot honour is refused with a 400 that names the field, never silently ignored.

  Background:
    Given a real worker "structured" with 2 slots is registered
    And an OpenAI client pointed at the queen

  Scenario: The client parses a structured answer into its pydantic model
    When the OpenAI client parses at temperature 0 an answer to "Tell me about Paris." into a City
    Then the answer was parsed into a City

  Scenario: JSON mode answers with a JSON object
    When the OpenAI client asks at temperature 0 in JSON mode "Describe a honey bee."
    Then the answer's content is one JSON object

  Scenario: A required tool call has arguments that validate, and the tool's result is answered
    When the OpenAI client asks at temperature 0 "What is the weather in Paris?" with the weather tool required
    Then the answer calls the weather tool with arguments that validate, and ended for "tool_calls"
    When the OpenAI client sends back the tool's result "18 degrees and sunny" for an answer without tools
    Then the follow-up is answered in words from a prompt that held the tool's result

  Scenario: A streamed tool call is assembled by the client from its deltas
    When the OpenAI client streams at temperature 0 "What is the weather in Oslo?" with the weather tool required
    Then the answer calls the weather tool with arguments that validate, and ended for "tool_calls"
    And its arguments arrived in pieces as the model wrote them

  Scenario: A named tool is the one called
    When the OpenAI client asks at temperature 0 "What time is it?" with the weather tool chosen by name
    Then the answer calls the weather tool with arguments that validate, and ended for "tool_calls"

  Scenario: Chat logprobs are the model's own, whole and streamed alike
    When the OpenAI client asks at temperature 0 for 8 tokens with 3 top logprobs to "Count from 1 to 100, separated by commas."
    Then each of the 8 tokens has its logprob, greedy took the likeliest, and the top probabilities sum to at most 1
    When the OpenAI client streams the same request
    Then the streamed logprobs are the whole answer's

  Scenario: Text completion logprobs spell the completion
    When the OpenAI client asks at temperature 0 for a text completion of 6 tokens of "Once upon a time" with 2 logprobs
    Then the completion's 6 tokens have logprobs and spell its text

  Scenario Outline: A penalty changes the greedy answer, towards repeating less
    When the OpenAI client asks at temperature 0 for 30 tokens to "Write a short poem about bees."
    And the OpenAI client asks the same with a <penalty> of <value>
    Then the penalised answer differs and repeats its tokens no more often

    Examples:
      | penalty           | value |
      | frequency_penalty | 1.5   |
      | presence_penalty  | 1.5   |

  Scenario: logit_bias bans the token greedy decoding would take first
    When the OpenAI client asks at temperature 0 for 8 tokens to "Count from 1 to 20, separated by commas."
    And the OpenAI client asks the same with its first token banned by logit_bias
    Then the biased answer begins differently

  Scenario: A constrained and an unconstrained answer at once, on two slots, both come out right
    When the OpenAI client asks at temperature 0 for 24 tokens to "Count from 1 to 20, separated by commas."
    And at the same time one chat is parsed into a City and another asks the same count again
    Then the two ran at the same time, the City parsed, and the count is the same as alone

  Scenario Outline: What rbee cannot honour is refused naming it
    When the OpenAI client sends a chat with <what>
    Then the OpenAI client raised BadRequestError with code "INVALID_REQUEST" and type "invalid_request_error"
    And the refusal names "<name>"

    Examples:
      | what                                  | name                                  |
      | two choices                           | n                                     |
      | a schema with a pattern               | response_format.json_schema.schema    |
      | a field OpenAI does not define        | guided_json                           |
      | audio output                          | audio                                 |
      | a tool choice naming no given tool    | tool_choice                           |

  Scenario: Embeddings are not found, and the answer says no worker serves them
    When the OpenAI client asks for embeddings
    Then the OpenAI client raised NotFoundError with code "MODEL_NOT_FOUND" and type "not_found_error"
    And the refusal names "embeddings"
