@auth @ratelimit
Feature: Per-key rate limits
  Each API key gets its own budget of requests per minute and of answers running at once; over it,
  the queen answers 429 RATE_LIMITED with Retry-After, and other keys are not affected.

  Scenario: A key over its requests per minute is refused, another key is not
    Given a queen that requires the API key "sk-a-0123456789abcdef" or "sk-b-0123456789abcdef" and allows each 3 requests a minute
    When "sk-a-0123456789abcdef" asks for the model list 4 times
    Then the first 3 answers were served
    And the queen refuses the OpenAI call with 429 "RATE_LIMITED" of type "rate_limit_error"
    And the answer carries a Retry-After header
    When "sk-b-0123456789abcdef" asks for the model list 1 time
    Then the queen serves it

  Scenario: The official OpenAI client raises RateLimitError
    Given a queen that requires the API key "sk-a-0123456789abcdef" or "sk-b-0123456789abcdef" and allows each 1 request a minute
    And an OpenAI client pointed at the queen with the key "sk-a-0123456789abcdef"
    When the OpenAI client lists the models
    And the OpenAI client tries to list the models
    Then the OpenAI client raised RateLimitError with code "RATE_LIMITED" and type "rate_limit_error"

  Scenario: A key may run only so many answers at once
    Given a queen that requires the API key "sk-a-0123456789abcdef" or "sk-b-0123456789abcdef" and lets each run 1 answer at a time
    And a scripted worker "roomy" with 4 slots that streams slowly is registered
    And a long answer is streaming from the queen for "sk-a-0123456789abcdef"
    When "sk-a-0123456789abcdef" asks the queen for 3 tokens
    Then the queen refuses with 429 "RATE_LIMITED"
    And the answer carries a Retry-After header
    When "sk-b-0123456789abcdef" asks the queen for 3 tokens
    Then the answer ends with a done event
    When the long answer is abandoned by its client
    Then "sk-a-0123456789abcdef" is served again within 5 seconds
