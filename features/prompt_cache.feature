@llama @cache @fixture.queen
Feature: Prompt cache
  A worker keeps each slot's KV after a request ends. The next turn of a conversation, which sends
  the whole history again, decodes only what is new; the done event says how many prompt tokens
  were reused, and the answer is the one a decode from scratch gives, token for token.

  Scenario: Later turns of a chat reuse the earlier turns and answer as a fresh decode does
    Given a real worker "chat" with 4 slots is registered
    When a client holds a 3-turn chat with the queen at temperature 0
    And the client asks every turn of that chat again with the prompt cache off
    Then every turn after the first reused at least the whole prompt of the turn before
    And no turn asked with the prompt cache off reused any
    And every turn answered the same with the prompt cache on and off
    And worker "chat" counted the reused prompt tokens in its metrics

  Scenario: The OpenAI route reports the cached prompt tokens in its usage
    Given a real worker "chat" with 4 slots is registered
    And an OpenAI client pointed at the queen
    When the OpenAI client holds a 3-turn chat at temperature 0
    And the OpenAI client asks every turn of that chat again with cache_prompt false
    Then every OpenAI turn after the first reports at least the prompt of the turn before as cached in its usage
    And every OpenAI turn answered the same with the prompt cache on and off

  Scenario: Conversations held at the same time never continue each other
    Given a real worker "chat" with 4 slots is registered
    When 4 clients each hold a 3-turn chat with the queen at the same time, at temperature 0
    And the client asks every turn of those chats again with the prompt cache off
    Then every turn after the first reused at least the whole prompt of the turn before
    And every turn answered the same with the prompt cache on and off

  Scenario: A conversation pushed out of the only slot comes back from host RAM
    Given a real worker "small" with 1 slot and 64 MiB of host RAM for its prompt cache is registered
    When 2 clients take turns holding a 2-turn chat each with the queen, at temperature 0
    And the client asks every turn of those chats again with the prompt cache off
    Then every turn after the first reused at least the whole prompt of the turn before
    And every turn answered the same with the prompt cache on and off
